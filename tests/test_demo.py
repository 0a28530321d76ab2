"""``safepassage demo`` end to end, as a person runs it: a subprocess, real HTTP on loopback, SQLite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(320)

MESSAGE = "canary-d3m0-7f21: I carry the archive keys and need a way out"


def _files(root: Path, skip: Path | None = None) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (skip is None or not p.is_relative_to(skip))]


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    work = tmp_path / "work"
    message_file = tmp_path / "message.txt"
    message_file.write_text(MESSAGE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "safepassage.client.cli", "demo", "--workdir", str(work), "--keep",
         "--message-file", str(message_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    steps = [int(n) for n in re.findall(r"^\[\s*(\d+)\]", out, flags=re.MULTILINE)]
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) >= 15
    for phrase in (
        "DEMONSTRATION",
        "directory version 1",
        "enrol",
        "logs in with password and TOTP",
        "signature verified",
        "escalates",
        "reads the package",
        "What the server holds",
        "none found",
        "Demonstration finished in",
        "applicant web pages",
    ):
        assert phrase in out, phrase
    assert MESSAGE not in out
    # The real admin path, 2 of 3: ada and bram sign each directory and its head, cleo never
    # needs to, and handlers are invited by an admin.
    assert "ADMIN SET: 2 of 3 must sign" in out
    for stage in ("directory", "head"):
        for name in ("ada", "bram"):
            assert f"{name} reviewed the diff and signed the {stage}" in out, (name, stage)
    assert "cleo reviewed" not in out
    assert re.search(r"ada publishes: directory version 1, log size 1", out)
    assert re.search(r"ada publishes: directory version 2, log size 2", out)
    assert "Admin ada invites two handlers" in out

    for sub in ("server", "integration", "applicant", "handlers/dana", "handlers/emil",
                "admins/ada", "admins/bram", "admins/cleo"):  # fmt: skip
        assert (work / sub).is_dir(), sub
    assert (work / "integration" / "read").is_dir()

    needles = (MESSAGE.encode(), b"canary-d3m0-7f21")
    for path in _files(work / "server") + _files(work / "integration", skip=work / "integration" / "read"):
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, path
    # The officer's decrypted copy does hold it: the scan above is not vacuous.
    assert any(MESSAGE.encode() in p.read_bytes() for p in _files(work / "integration" / "read"))
