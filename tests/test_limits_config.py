"""Rate limits, adaptive proof-of-work difficulty, and configuration loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from safepassage.server.config import ConfigError, load_config
from safepassage.server.errors import ApiError
from safepassage.server.limits import PowDifficulty, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_refuses_past_the_limit_and_recovers() -> None:
    clock = Clock()
    limiter = RateLimiter(3, "submissions", clock)
    for _ in range(3):
        limiter.hit()
    with pytest.raises(ApiError) as info:
        limiter.hit()
    assert info.value.status == 429
    assert info.value.code == "rate_limited"
    clock.now += 61
    limiter.hit()


def test_difficulty_rises_one_bit_per_doubling_of_load() -> None:
    clock = Clock()
    difficulty = PowDifficulty(base=10, maximum=14, threshold=60, clock=clock)
    assert difficulty.current() == 10
    for _ in range(60):
        difficulty.record_submission()
    assert difficulty.current() == 10
    difficulty.record_submission()
    assert difficulty.current() == 11
    for _ in range(60):
        difficulty.record_submission()
    assert difficulty.current() == 12  # 121 in the last minute: just over 2x
    for _ in range(10_000):
        difficulty.record_submission()
    assert difficulty.current() == 14  # capped
    clock.now += 61
    assert difficulty.current() == 10


def test_config_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("port = 9000\nmailbox_daily_quota = 7\n")
    config = load_config(tmp_path, env={"SAFEPASSAGE_PORT": "9100"})
    assert config.port == 9100
    assert config.mailbox_daily_quota == 7
    assert config.url == f"sqlite+aiosqlite:///{tmp_path / 'safepassage.db'}"


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ("bogus = 1\n", {}),
        ("port = 'x'\n", {}),
        ("port = 70000\n", {}),
        ("", {"SAFEPASSAGE_PORT": "eighty"}),
        ("", {"SAFEPASSAGE_POW_BASE_DIFFICULTY": "30"}),
        ("", {"SAFEPASSAGE_DATABASE_URL": "mysql://x"}),
        ("", {"SAFEPASSAGE_ORG_FINGERPRINT": "12345"}),
        ("not toml [", {}),
        ("", {"SAFEPASSAGE_MAILBOX_DAILY_QUOTA": "0"}),
    ],
)
def test_bad_configuration_is_one_clear_error(tmp_path: Path, toml: str, env: dict[str, str]) -> None:
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ConfigError):
        load_config(tmp_path, env=env)
