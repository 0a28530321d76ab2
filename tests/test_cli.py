"""The `safepassage` command as a person runs it: real process, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .helpers import Org

ORG = Org()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("safepassage")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, check=False)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert "safepassage" in result.stdout


def test_directory_show_prints_fingerprints(tmp_path: Path) -> None:
    path = tmp_path / "directory.json"
    d = ORG.directory()
    path.write_bytes(ORG.signed(d).to_bytes())
    result = run("directory", "show", str(path), "--org", ORG.admin_set.fingerprint())
    assert result.returncode == 0, result.stderr
    assert ORG.admin_set.fingerprint() in result.stdout
    assert d.handler("alice").identity_key.fingerprint() in result.stdout
    assert "2 of 3 must sign" in result.stdout


def test_wrong_organisation_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "directory.json"
    path.write_bytes(ORG.signed(ORG.directory()).to_bytes())
    result = run("directory", "show", str(path), "--org", "00000 " * 10)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: The directory is not signed by the organisation you pinned")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00garbage")
    result = run("directory", "show", str(bad), "--org", "1")
    assert result.returncode == 3
    assert result.stderr.startswith("error: The data is not in the expected format")
    missing = run("directory", "show", str(tmp_path / "nope.json"), "--org", "1")
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr
