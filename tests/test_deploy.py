"""deploy/: the torrc files pass tor's own check, the units pass systemd's, the install script parses.

``tor --verify-config`` reads each torrc exactly as tor would (options,
includes, onion service blocks) without starting it; paths under /var/lib and
/run are moved into a temporary folder first. ``systemd-analyze verify`` checks
the units (syntax, hardening directives, ExecStart executable); the one change
is the executable's path, pointed at this checkout's ``safepassage``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TOR = shutil.which("tor") or "/usr/sbin/tor"
UNITS = ("safepassage-tor", "safepassage-intake", "safepassage-staff", "safepassage-integration")


def _verify_torrc(tmp_path: Path, torrc: str, includes: dict[str, str]) -> subprocess.CompletedProcess[str]:
    data, run, confd = tmp_path / "data", tmp_path / "run", tmp_path / "tor.d"
    for d in (data, run, confd):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def moved(text: str) -> str:
        return (
            text.replace("/var/lib/safepassage-tor", str(data))
            .replace("/run/safepassage-tor", str(run))
            .replace("/etc/safepassage/tor.d", str(confd))
            .replace("/var/lib/tor/onion-auth", str(data))
            .replace("Log notice syslog", "Log notice stderr")
        )

    for name, text in includes.items():
        (confd / name).write_text(moved(text))
    path = tmp_path / "torrc"
    path.write_text(moved(torrc))
    return subprocess.run(
        [TOR, "--verify-config", "-f", str(path), "--defaults-torrc", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_server_torrc_with_every_static_onion_is_valid(tmp_path: Path) -> None:
    includes = {n: (DEPLOY / "tor" / n).read_text() for n in ("public.conf", "staff.conf", "integration.conf")}
    done = _verify_torrc(tmp_path, (DEPLOY / "tor" / "torrc").read_text(), includes)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Configuration was valid" in done.stdout
    text = (DEPLOY / "tor" / "torrc").read_text()
    assert "\nSafeLogging 1\n" in text
    assert "HiddenServicePoWDefensesEnabled 1" in includes["public.conf"]


def test_a_broken_torrc_is_caught(tmp_path: Path) -> None:
    done = _verify_torrc(tmp_path, (DEPLOY / "tor" / "torrc").read_text() + "HiddenServicePoWQueueRate -5\n", {})
    assert done.returncode != 0


def test_handler_and_frontend_torrcs_are_valid(tmp_path: Path) -> None:
    done = _verify_torrc(tmp_path / "h", (DEPLOY / "tor" / "handler-client.torrc").read_text(), {})
    assert done.returncode == 0, done.stdout[-2000:]
    front = tmp_path / "f"
    (front / "data" / "frontend").mkdir(parents=True, mode=0o700)
    (front / "data" / "frontend" / "ob_config").write_text("MasterOnionAddress " + "a" * 56 + ".onion\n")
    base = (DEPLOY / "tor" / "torrc").read_text()
    done = _verify_torrc(front, base, {"frontend.conf": (DEPLOY / "onionbalance" / "frontend.conf").read_text()})
    assert done.returncode == 0, done.stdout[-2000:]


def test_onionbalance_config_names_a_master_key_and_front_ends() -> None:
    config = yaml.safe_load((DEPLOY / "onionbalance" / "config.yaml").read_text())
    [service] = config["services"]
    assert service["key"].startswith("/var/lib/onionbalance/")
    assert len(service["instances"]) >= 2


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI (scripts/ensure-system-deps installs systemd)")
        pytest.skip("systemd-analyze is not installed here (it ships with systemd)")
    exe = str(Path(sys.executable).with_name("safepassage"))
    for unit in UNITS:
        text = (DEPLOY / "systemd" / f"{unit}.service").read_text()
        for needed in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "LimitCORE=0\n",
            "MemorySwapMax=0\n",
        ):
            assert needed in text, (unit, needed)
        assert "User=root" not in text
        (tmp_path / f"{unit}.service").write_text(text.replace("/opt/safepassage/venv/bin/safepassage", exe))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / f"{u}.service") for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_install_script_dry_run_lists_every_step() -> None:
    script = DEPLOY / "install-debian12.sh"
    bash = shutil.which("bash") or "/bin/bash"
    assert subprocess.run([bash, "-n", str(script)], check=False).returncode == 0
    done = subprocess.run(
        [str(script), "--dry-run", "--org", "1"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    for step in (
        "apt-get install",
        "useradd --system",
        "/etc/systemd/system/safepassage-intake.service",
        "server init --data /var/lib/safepassage/server",
        "staff init",
        'tor_control = "unix:/run/safepassage-tor/control"',
        "systemctl enable --now safepassage-intake.service safepassage-staff.service",
    ):
        assert step in done.stdout, step
    missing = subprocess.run([str(script), "--dry-run"], capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --org is required")
