"""`safepassage integration init / run / inbox / read` as an operator and an officer run them: real processes.

The service runs beside a real intake (tests/deployment.py), on SQLite and on
PostgreSQL; the officer's commands are separate `safepassage` processes working
on the service's data folder, and `read` fetches and verifies the directory
from the intake itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import stat
import sys
import unicodedata
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.client.officer import safe_file_name
from safepassage.crypto.directory import IntegrationService
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.envelope import CHUNK_DATA_MAX
from safepassage.crypto.keys import HybridPublicKey, SigningKey, VerifyKey
from safepassage.crypto.staffmsg import IntegrationReceipt
from safepassage.crypto.vault import MIN_MEMLIMIT, MIN_OPSLIMIT, Passphrase
from safepassage.server import tor
from safepassage.server.context import INTAKE
from safepassage.server.integration.config import load_integration_config
from safepassage.server.integration.keys import create_officer_vault
from safepassage.server.security import HEADERS

from .deployment import Deployment
from .helpers import Org
from .integration_service import ASSESSMENT, CANARY, Integration, build_package, integration_database, serving

EXE = str(Path(sys.executable).with_name("safepassage"))
PASSPHRASE = "seven words the officer keeps in mind"
HOSTILE_NAME = "../../etc/passwd\u202eexe.txt"


async def run(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """One `safepassage` process; the event loop keeps serving the intake and the service meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        EXE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _passphrase_file(tmp_path: Path, text: str = PASSPHRASE, name: str = "passphrase.txt") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_args(package_id: str, data: Path, out: Path, passphrase_file: Path) -> tuple[str, ...]:
    # "--" before the id: package ids may start with "-" (they are [A-Za-z0-9_-]{8,64}).
    return (
        "integration",
        "read",
        "--data",
        str(data),
        "--out",
        str(out),
        "--passphrase-file",
        str(passphrase_file),
        "--",
        package_id,
    )


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _refused(code: int, out: str, err: str, expected: int) -> None:
    assert code == expected, err
    assert err.startswith("error: ")
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert out == ""


async def test_init_refuses_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    org = Org().admin_set.fingerprint()
    pw = _passphrase_file(tmp_path)
    data = tmp_path / "svc"
    base = ("integration", "init", "--data", str(data), "--passphrase-file", str(pw))
    cases = [
        ((*base, "--org", "12345", "--intake", "http://127.0.0.1:1"), 2),
        ((*base, "--org", org, "--intake", "ftp://127.0.0.1:1"), 2),
        ((*base, "--org", org, "--intake", "http://example.org"), 2),  # not loopback and no --socks
        ((*base, "--org", org, "--intake", "http://127.0.0.1:1", "--database-url", "mysql://x"), 2),
    ]
    for (code, out, err), (_, expected) in zip(
        await asyncio.gather(*(run(*args) for args, _ in cases)), cases, strict=True
    ):
        _refused(code, out, err, expected)
    weak = _passphrase_file(tmp_path, "too short", "weak.txt")
    code, out, err = await run(
        "integration",
        "init",
        "--data",
        str(data),
        "--passphrase-file",
        str(weak),
        "--org",
        org,
        "--intake",
        "http://127.0.0.1:1",
    )
    _refused(code, out, err, 2)
    assert "passphrase" in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passphrase.txt", "weak.txt"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    code, out, err = await run(
        "integration", "init", "--data", str(busy), "--org", org, "--intake", "http://127.0.0.1:1"
    )  # refused before any passphrase is asked for (stdin is empty)
    _refused(code, out, err, 2)
    assert "not empty" in err
    for command in ("inbox", "run", "migrate"):
        _refused(*(await run("integration", command, "--data", str(tmp_path / "nowhere"))), 2)
    assert not (tmp_path / "nowhere").exists()


async def test_init_deliver_inbox_and_read(
    deployment: Deployment, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    org = deployment.org
    data = tmp_path / "svc"
    pw = _passphrase_file(tmp_path)
    with integration_database(request, database_url) as url:
        extra = ("--database-url", url) if url else ()
        code, out, err = await run(
            "integration", "init", "--data", str(data), "--org", org.admin_set.fingerprint(),
            "--intake", deployment.base_url, "--passphrase-file", str(pw), *extra,
        )  # fmt: skip
        assert code == 0, err
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for path in (*(data / "keys").iterdir(), data / "officer.vault", data / "config.toml"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values = [line.split()[-1] for line in out.splitlines() if "key:" in line]
        signing, encryption = VerifyKey(b64d(values[0])), HybridPublicKey(b64d(values[1]))
        assert signing.fingerprint() in out
        assert encryption.fingerprint() in out

        # The admins put the printed keys in the directory.
        directory = replace(deployment.directory, version=2, integration=IntegrationService(signing, (encryption,)))
        await deployment.publish(directory)
        await deployment.app[INTAKE].refresh()

        config = load_integration_config(data)
        files = [os.urandom(CHUNK_DATA_MAX + 77), b"plain text\n"]
        # An id that starts with "-", as a random one may: the officer passes it after "--".
        pkg = build_package(org, directory, files=files, names=[HOSTILE_NAME, "notes.txt"], package_id="-dash-first")
        pending = build_package(org, directory, files=[b"never finished"])
        async with serving(config, deployment) as integration:
            body = await integration.deliver(pkg)
            receipt = IntegrationReceipt.from_json(body)
            receipt.verify(directory, envelope_hash=hashlib.sha256(pkg.envelope).digest())
            assert (await integration.post(pending)).status == 201

            code, out, err = await run("integration", "inbox", "--data", str(data))
            assert code == 0, err
            [line] = [line for line in out.splitlines() if pkg.package_id in line]
            assert line.split()[1:4] == ["alice", receipt.day, "2"]
            assert "16 KiB + 3 MiB" in line  # the envelope's bucket, and three 1 MiB chunks
            assert "1 more still uploading" in out

            out_dir = tmp_path / "case"
            code, out, err = await run(*read_args(pkg.package_id, data, out_dir, pw))
            assert code == 0, err
            assert "verified" in out
            assert ASSESSMENT in out
            assert CANARY not in out + err  # the applicant's words go to the private folder only
            assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
            names = sorted(p.name for p in out_dir.iterdir())
            assert names == sorted(["case.txt", safe_file_name(HOSTILE_NAME, 0), "01-notes.txt"])
            for path in out_dir.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert (out_dir / safe_file_name(HOSTILE_NAME, 0)).read_bytes() == files[0]
            assert (out_dir / "01-notes.txt").read_bytes() == files[1]
            case = (out_dir / "case.txt").read_text(encoding="utf-8")
            assert CANARY in case
            assert ASSESSMENT in case
            assert "\u202e" not in case

            # Never overwritten; nothing written on any refusal.
            before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
            _refused(*(await run(*read_args(pkg.package_id, data, out_dir, pw))), 2)
            assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
            wrong = _passphrase_file(tmp_path, "a wrong passphrase, long enough", "wrong.txt")
            refusals = [
                (pkg.package_id, wrong, 3),
                ("no-such-package", pw, 2),
                (pending.package_id, pw, 2),
                ("../x", pw, 2),
            ]
            answers = await asyncio.gather(
                *(
                    run(*read_args(package_id, data, tmp_path / f"refused-{i}", passphrase))
                    for i, (package_id, passphrase, _) in enumerate(refusals)
                )
            )
            for i, ((code, out, err), (*_, expected)) in enumerate(zip(answers, refusals, strict=True)):
                _refused(code, out, err, expected)
                assert not (tmp_path / f"refused-{i}").exists()
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

        # The applicant's words are nowhere in the service's folder (database, WAL, state, keys).
        for path in _files_under(data):
            content = path.read_bytes()
            assert CANARY.encode() not in content, path
            assert ASSESSMENT.encode() not in content, path


async def _officer_vault(integration: Integration) -> None:
    create_officer_vault(
        integration.config.vault_path,
        Passphrase(PASSPHRASE),
        [integration.org.integration_key],
        opslimit=MIN_OPSLIMIT,
        memlimit=MIN_MEMLIMIT,
    )


async def _read(integration: Integration, tmp_path: Path, package_id: str) -> tuple[int, str, str]:
    return await run(*read_args(package_id, integration.config.data_dir, tmp_path / "out", _passphrase_file(tmp_path)))


async def test_read_refuses_a_package_that_contradicts_itself(integration: Integration, tmp_path: Path) -> None:
    await _officer_vault(integration)
    # Carol delivers (and signs the delivery of) a package alice signed: the service cannot tell.
    swapped = integration.package(handler="carol", escalation_signer="alice")
    await integration.deliver(swapped)
    _refused(*(await _read(integration, tmp_path, swapped.package_id)), 3)
    # Chunks of another package under this one's envelope: the service cannot tell either.
    donor = integration.package(files=[b"secret plan"])
    host = integration.package(files=[b"other file!"])
    host.frames = donor.frames
    await integration.deliver(host)
    _refused(*(await _read(integration, tmp_path, host.package_id)), 3)
    # A package from a handler the directory no longer lists cannot be verified.
    revoked = integration.package(handler="carol")
    await integration.deliver(revoked)
    current = integration.deployment.directory
    await integration.publish(
        replace(current, version=2, handlers=tuple(h for h in current.handlers if h.handler_id != "carol"))
    )
    code, out, err = await _read(integration, tmp_path, revoked.package_id)
    _refused(code, out, err, 3)
    assert "carol" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # And a sound package reads, its text quoted so that it cannot fake a heading of its own.
    forged = f"{CANARY}\nAssessment by handler alice:\nNot credible, drop the case."
    good = integration.package(files=[b"fine"], message=forged)
    await integration.deliver(good)
    code, out, err = await _read(integration, tmp_path, good.package_id)
    assert code == 0, err
    case = (tmp_path / "out" / "case.txt").read_text(encoding="utf-8").splitlines()
    assert [line for line in case if line.startswith("Assessment by")] == ["Assessment by handler alice:"]
    assert "  | Not credible, drop the case." in case
    assert case[case.index("Assessment by handler alice:") + 1] == f"  | {ASSESSMENT}"


def test_attachment_names_are_only_names() -> None:
    assert safe_file_name("report.pdf", 0) == "00-report.pdf"
    assert safe_file_name("../../etc/passwd", 3) == "03-_.._etc_passwd"
    assert safe_file_name("..", 1) == "01-attachment"
    assert safe_file_name("a\u202etxt.exe", 2) == "02-atxt.exe"
    assert safe_file_name("line\nbreak\ttab", 4) == "04-line_break_tab"
    assert safe_file_name(".hidden", 5) == "05-hidden"
    long = safe_file_name("ж" * 300 + ".pdf", 6)
    assert long.endswith(".pdf")
    assert len(long.encode()) <= 3 + 200
    for hostile in ("/", "\x00", "\u0000/\u0000", " . ", "C:\\Windows\\x"):
        name = safe_file_name(hostile, 7)
        assert "/" not in name
        assert "\x00" not in name
        assert name not in (".", "..")


@given(st.text(max_size=400), st.integers(min_value=0, max_value=63))
def test_any_attachment_name_becomes_a_plain_file_name(name: str, attachment: int) -> None:
    safe = safe_file_name(name, attachment)
    assert safe.startswith(f"{attachment:02d}-")
    assert len(safe.encode()) <= 3 + 200
    assert "/" not in safe
    assert "\\" not in safe
    assert all(unicodedata.category(ch)[0] != "C" for ch in safe)
    assert safe == safe.strip()
    assert not safe.endswith(".")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_run_serves_the_api(integration: Integration, tmp_path: Path) -> None:
    port = _free_port()
    data = integration.config.data_dir
    proc = await asyncio.create_subprocess_exec(
        EXE, "integration", "run", "--data", str(data), "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/integration/v1/packages"
        pkg = integration.package()
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.post(url, data=pkg.envelope, headers=pkg.headers()) as response:
                        status, body, headers = response.status, await response.json(), response.headers
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the service did not start")
        assert status == 201, body
        IntegrationReceipt.from_json(body["receipt"]).verify(
            integration.deployment.directory, envelope_hash=hashlib.sha256(pkg.envelope).digest()
        )
        for name, value in HEADERS.items():
            assert headers[name] == value
        # A request aiohttp cannot parse: its raw header line must not reach the log.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /integration/v1/packages HTTP/1.1\r\nHost: x\r\n"
            b"Safe-Passage-Upload: canary-token-5d2\x01\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        await reader.read(4096)
        writer.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    log = err.decode()
    assert "Serving on" in log
    assert CANARY not in log
    assert "canary-token-5d2" not in log
    assert pkg.package_id not in log  # no access log


async def test_rotate_signing_key_makes_one_waiting_key(integration: Integration) -> None:
    data, keys = integration.config.data_dir, integration.config.keys_dir
    current = (keys / "signing.key").read_bytes()
    code, out, err = await run("integration", "rotate-signing-key", "--data", str(data))
    assert code == 0, err
    waiting = keys / "signing.next.key"
    assert waiting.stat().st_mode & 0o777 == 0o600
    made = SigningKey.from_seed_bytes(waiting.read_bytes()).verify_key
    assert b64e(made.public_bytes_raw()) in out
    assert made.fingerprint() in out
    assert (keys / "signing.key").read_bytes() == current  # nothing switches before the admins list it
    # A second rotation while one waits: one error line, the waiting key kept.
    before = waiting.read_bytes()
    _refused(*(await run("integration", "rotate-signing-key", "--data", str(data))), 2)
    assert waiting.read_bytes() == before
    # No service here: refused, nothing written.
    _refused(*(await run("integration", "rotate-signing-key", "--data", str(data / "nowhere"))), 2)
    assert not (data / "nowhere").exists()


async def test_onion_rotate_finish_waits_for_the_published_move(integration: Integration) -> None:
    # The integration service's onion: --finish reads the directory from the intake, verified.
    data = integration.config.data_dir
    keys = integration.config.keys_dir
    tor.OnionKey.generate().save(keys / "onion-integration.key")
    code, out, err = await run("server", "onion-rotate", "--data", str(data), "--role", "integration")
    assert code == 0, err
    new = out.split("Next integration address: ")[1].split()[0]
    before = {p.name: p.read_bytes() for p in keys.glob("onion-integration*")}
    finish = ("server", "onion-rotate", "--data", str(data), "--role", "integration", "--finish")

    code, _, err = await run(*finish)
    assert code == 2
    assert err.startswith("error: The newest published directory does not name the next onion address yet")
    assert f"the next is {new}" in err
    assert {p.name: p.read_bytes() for p in keys.glob("onion-integration*")} == before

    current = integration.deployment.directory
    await integration.publish(replace(current, version=2, onions={"integration": new}))
    code, out, err = await run(*finish)
    assert code == 0, err
    assert f"{new} is now the integration address" in out
    assert (keys / "onion-integration.key").read_bytes() == before["onion-integration.next.key"]
