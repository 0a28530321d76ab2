"""`safepassage server init / publish / run / migrate` as an operator runs them: real processes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from safepassage.client.audit import check_audit_entries
from safepassage.crypto.encoding import JsonObject, b64d, canonical_json
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.translog import MerkleLog
from safepassage.server import tor
from safepassage.server.audit import read_head, read_page
from safepassage.server.config import load_config
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.staff.audit_api import wire as audit_wire

from .deployment import now_ts
from .helpers import Org

EXE = str(Path(sys.executable).with_name("safepassage"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _audit_log(data: Path) -> tuple[list[JsonObject], int, bytes]:
    store = Store(make_engine(load_config(data).url))
    try:
        async with store.read() as session:
            rows = await read_page(session, after=0, limit=100)
            head_seq, head_hash = await read_head(session)
    finally:
        await store.close()
    return [audit_wire(row) for row in rows], head_seq, head_hash


def test_init_refuses_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    bad = run("server", "init", "--data", str(data), "--org", "12345")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ")
    assert not data.exists()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    busy = run("server", "init", "--data", str(tmp_path / "busy"), "--org", Org().admin_set.fingerprint())
    assert busy.returncode == 2
    assert "not empty" in busy.stderr


def test_init_publish_run_and_serve(tmp_path: Path) -> None:
    org = Org()
    data = tmp_path / "srv"
    init = run("server", "init", "--data", str(data), "--org", org.admin_set.fingerprint())
    assert init.returncode == 0, init.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for key_file in (data / "keys").iterdir():
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    receipt_b64 = next(line.split()[-1] for line in init.stdout.splitlines() if "receipt key:" in line)
    receipt_key = VerifyKey(b64d(receipt_b64))
    assert receipt_key.fingerprint() in init.stdout

    # The admins build and sign directory version 1 naming this server's receipt key.
    org.receipt = SigningKey.from_seed_bytes((data / "keys" / "receipt.key").read_bytes())
    start = now_ts() - 60
    directory = org.directory(1, handlers=tuple(org.handler(h, ("general",), start=start) for h in org.handler_ids))
    signed, head = org.publication(directory, MerkleLog())
    (tmp_path / "dir.json").write_bytes(signed.to_bytes())
    (tmp_path / "head.json").write_bytes(canonical_json(head.to_json()))
    published = run("server", "publish", "--data", str(data), str(tmp_path / "dir.json"), str(tmp_path / "head.json"))
    assert published.returncode == 0, published.stderr
    replayed = run("server", "publish", "--data", str(data), str(tmp_path / "dir.json"), str(tmp_path / "head.json"))
    assert replayed.returncode == 2
    assert replayed.stderr.startswith("error: The server refused to publish")
    # The publication is in the audit log as the operator's, signed by this server's receipt
    # key; the refused one left nothing.
    entries, head_seq, head_hash = asyncio.run(_audit_log(data))
    assert [(e["actor"], e["action"]) for e in entries] == [("operator", "publish")]
    assert str(entries[0]["detail"]).startswith("directory version 1; removed 0 handler(s)")
    report = check_audit_entries(entries, [receipt_key], head_seq=head_seq, head_hash=head_hash)
    assert report.ok, report.findings

    assert run("server", "migrate", "--data", str(data)).returncode == 0

    port = _free_port()
    proc = subprocess.Popen(
        [EXE, "server", "run", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 30
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/directory", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        assert body is not None, "server did not answer"
        assert body["directory"]["directory"]["version"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    # No access log: no request line, no client address, in what the server printed.
    assert "GET /api/v1/directory" not in err
    assert "127.0.0.1:" not in err.replace(f"http://127.0.0.1:{port}", "")
    assert proc.returncode == 0, err


def test_onion_rotate_finish_waits_for_the_published_move(tmp_path: Path) -> None:
    org = Org()
    data = tmp_path / "srv"
    assert run("server", "init", "--data", str(data), "--org", org.admin_set.fingerprint()).returncode == 0
    org.receipt = SigningKey.from_seed_bytes((data / "keys" / "receipt.key").read_bytes())
    keys = data / "keys"
    tor.OnionKey.generate().save(keys / "onion-public.key")
    old = run("server", "onion-address", "--data", str(data), "--role", "public").stdout.split()[-1]
    started = run("server", "onion-rotate", "--data", str(data), "--role", "public")
    assert started.returncode == 0, started.stderr
    new = started.stdout.split("Next public address: ")[1].split()[0]

    def onion_files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(keys.glob("onion-public*"))}

    def finish() -> subprocess.CompletedProcess[str]:
        return run("server", "onion-rotate", "--data", str(data), "--role", "public", "--finish", "--grace-hours", "1")

    log = MerkleLog()
    start = now_ts() - 60
    handlers = tuple(org.handler(h, ("general",), start=start) for h in org.handler_ids)

    def publish(version: int, onion: str) -> None:
        signed, head = org.publication(org.directory(version, handlers=handlers, onions={"public": onion}), log)
        (tmp_path / "dir.json").write_bytes(signed.to_bytes())
        (tmp_path / "head.json").write_bytes(canonical_json(head.to_json()))
        done = run("server", "publish", "--data", str(data), str(tmp_path / "dir.json"), str(tmp_path / "head.json"))
        assert done.returncode == 0, done.stderr
        log.append(signed.to_bytes())

    before = onion_files()
    assert sorted(before) == ["onion-public.key", "onion-public.next.key"]
    # Nothing published yet, then a directory that still names the old address: refused, nothing moves.
    for publication in (None, (1, old)):
        if publication is not None:
            publish(*publication)
        refused = finish()
        assert refused.returncode == 2
        error = refused.stderr.splitlines()[0]
        assert error.startswith("error: The newest published directory does not name the next onion address yet")
        assert new in error
        assert refused.stderr.splitlines()[1].startswith("hint: ")
        assert onion_files() == before

    # The admins published the move: --finish makes the next address current.
    publish(2, new)
    finished = finish()
    assert finished.returncode == 0, finished.stderr
    assert f"{new} is now the public address" in finished.stdout
    after = onion_files()
    assert after["onion-public.key"] == before["onion-public.next.key"]
    assert "onion-public.next.key" not in after
    assert [before["onion-public.key"]] == [v for k, v in after.items() if ".retired-" in k]


def test_onion_address_can_be_made_before_the_first_publication(tmp_path: Path) -> None:
    """The admins' first directory names the onions, so an address must be known before any
    service has published: --create makes the key offline, and later runs show the same address."""
    data = tmp_path / "srv"
    assert run("server", "init", "--data", str(data), "--org", Org().admin_set.fingerprint()).returncode == 0
    missing = run("server", "onion-address", "--data", str(data), "--role", "staff")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ")
    assert "--create" in missing.stderr  # the hint says what to do, not how to rotate
    assert "rotation" not in missing.stderr.lower()
    made = run("server", "onion-address", "--data", str(data), "--role", "staff", "--create")
    assert made.returncode == 0, made.stderr
    address = made.stdout.split("current: ")[1].strip()
    assert re.fullmatch(r"[a-z2-7]{56}\.onion", address), address
    key = data / "keys" / "onion-staff.key"
    assert key.stat().st_mode & 0o777 == 0o600
    again = run("server", "onion-address", "--data", str(data), "--role", "staff", "--create")
    assert again.stdout == made.stdout  # never replaced
    nowhere = run("server", "onion-address", "--data", str(tmp_path / "nowhere"), "--role", "staff", "--create")
    assert nowhere.returncode != 0
    assert not (tmp_path / "nowhere").exists()
