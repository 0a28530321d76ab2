"""`safepassage staff init / invite / run` as an operator runs them: real processes, real files."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from safepassage.server.keys import TOTP_KEY_FILE, load_keys

from .helpers import Org
from .test_server_cli import EXE, _free_port, run


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("staff-cli") / "srv"
    init = run("server", "init", "--data", str(data), "--org", Org().admin_set.fingerprint())
    assert init.returncode == 0, init.stderr
    return data


def invitations(data: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{data / 'safepassage.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT username, role FROM staff_invitations ORDER BY username").fetchall()


def test_init_creates_the_staff_key(server_dir: Path) -> None:
    key = server_dir / "keys" / TOTP_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


@pytest.mark.parametrize(
    "args",
    [
        ("--user", "Alice", "--role", "handler"),
        ("--user", "alice", "--role", "root"),
        ("--user", "-alice", "--role", "admin"),
        ("--user", "a" * 65, "--role", "admin"),
    ],
)
def test_invite_refuses_bad_input_and_writes_nothing(server_dir: Path, args: tuple[str, ...]) -> None:
    before = invitations(server_dir)
    result = run("staff", "invite", "--data", str(server_dir), *args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert result.stderr.startswith("error: ")
    assert result.stdout == ""
    assert invitations(server_dir) == before


def test_invite_outside_a_server_folder_creates_nothing(tmp_path: Path) -> None:
    result = run("staff", "invite", "--data", str(tmp_path / "nothing"), "--user", "root", "--role", "admin")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_invite_then_enrol_through_the_running_staff_app(server_dir: Path) -> None:
    invited = run("staff", "invite", "--data", str(server_dir), "--user", "root", "--role", "admin")
    assert invited.returncode == 0, invited.stderr
    code = invited.stdout.splitlines()[1].strip()
    assert len(code) == 43
    assert "UTC" in invited.stdout
    assert ("root", "admin") in invitations(server_dir)
    # The code itself is not stored.
    assert code.encode() not in (server_dir / "safepassage.db").read_bytes()

    port = _free_port()
    proc = subprocess.Popen(
        [EXE, "staff", "run", "--data", str(server_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/staff/v1"
    try:
        status = None
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/me", timeout=5)  # noqa: S310 (loopback test URL)
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.2)
        assert status == 401
        request = urllib.request.Request(  # noqa: S310
            base + "/enroll",
            data=json.dumps({"invitation": code, "password": "operator chose this"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        assert response.status == 201
        assert body["username"] == "root"
        assert body["role"] == "admin"
        # A request aiohttp's parser refuses, carrying a bearer token: not quoted in any log.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"GET /staff/v1/me HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer canary-token-51c\x01\r\nContent-Length: 0\r\n\r\n"
            )
            raw.recv(4096)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # No access log: no request line, no client address.
    assert "POST /staff/v1/enroll" not in err
    assert "GET /staff/v1/me" not in err
    assert "127.0.0.1:" not in err.replace(f"http://127.0.0.1:{port}", "")
    assert code not in err
    assert "canary-token-51c" not in err


def test_folders_made_before_the_staff_app(tmp_path: Path) -> None:
    data = tmp_path / "old"
    assert run("server", "init", "--data", str(data), "--org", Org().admin_set.fingerprint()).returncode == 0
    (data / "keys" / TOTP_KEY_FILE).unlink()  # as a folder from before this key existed
    keys = load_keys(data / "keys")  # the public app still loads, and nothing is created
    assert keys.totp is None
    assert not (data / "keys" / TOTP_KEY_FILE).exists()
    refused = run("staff", "invite", "--data", str(data), "--user", "root", "--role", "admin")
    assert refused.returncode == 2
    assert "totp.key" in refused.stderr
    assert "safepassage staff init" in refused.stderr
    created = run("staff", "init", "--data", str(data))
    assert created.returncode == 0, created.stderr
    key = data / "keys" / TOTP_KEY_FILE
    first = key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = run("staff", "init", "--data", str(data))
    assert again.returncode == 0
    assert "nothing changed" in again.stdout
    assert key.read_bytes() == first
    assert load_keys(data / "keys").totp is not None
