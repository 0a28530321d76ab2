"""10,000 stored contacts opened by one ``safepassage handler read-all``, against the raw primitive loop.

Run with ``make bench`` (or ``python -m bench.bulk``). The intake and the
staff app run as ``safepassage server run`` and ``staff run`` on loopback (one
SQLite or PostgreSQL store); the handler ``dana`` is enrolled with the real
client, listed in directory version 2 and logged in. Then 10,000 contacts are
generated in this process: real contact payloads signed by applicant mailbox
keys and sealed to every current intake key of the pool (the org's three
handlers and dana: four recipients, smallest bucket), inserted straight into
the database as complete contacts owned by dana (the intake's own path is
measured by ``bench.intake``).

Each round, interleaved:

* **command**: ``safepassage handler read-all --out DIR`` in a process of its
  own, wall clock from start to exit: interpreter start, vault opening,
  directory fetch and verification, every page over HTTP, every contact
  opened and verified, 10,000 files written and fsynced. Its output folder is
  checked afterwards (10,000 files, no failure).
* **baseline**: the raw primitive calls opening and verifying one contact
  needs, 10,000 times in a loop in this process: X25519, ML-KEM-768
  decapsulation, the SHA3-256 combiner, the wrap and body AEADs, the key
  commitment's HKDF and HMAC, the envelope hash, and the Ed25519 verification
  of the applicant's signature. No framing, parsing, HTTP or files.

Ratio = baseline time / command time (1.0: the command adds nothing to the
cryptography). Target >= 0.7.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp
from sqlalchemy import insert

from bench.pgdb import bench_database
from safepassage.client.handler import login
from safepassage.client.handler_vault import open_handler_vault
from safepassage.crypto import _primitives as P
from safepassage.crypto import envelope as E
from safepassage.crypto import labels as L
from safepassage.crypto.intake import Contact
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey, SigningKey
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.db.models import Mailbox
from safepassage.server.directory_store import load_published
from tests.durability import World
from tests.handler_env import PASSPHRASE, PASSWORD

EXE = str(Path(sys.executable).with_name("safepassage"))
MESSAGE = "A message of a few hundred characters, as a first contact might be. " * 6
MAILBOXES = 200


def _contacts(recipients: list[HybridPublicKey], n: int) -> list[tuple[str, bytes, bytes]]:
    """(mailbox id, mailbox public key, envelope) for ``n`` contacts from ``MAILBOXES`` applicants."""
    applicants = [(SigningKey.generate(), HybridPrivateKey.generate().public_key) for _ in range(MAILBOXES)]
    out = []
    for i in range(n):
        mailbox, reply_key = applicants[i % MAILBOXES]
        payload = Contact(
            pool="general",
            language="ru",
            message=f"{MESSAGE} ({i})",
            fields={"role": "officer"},
            attachments=(),
            reply_key=reply_key,
            mailbox_key=mailbox.verify_key,
            origin="cli",
        ).seal_payload(mailbox)
        sealed = E.seal(payload, recipients, E.Purpose.CONTACT)
        out.append((mailbox.verify_key.key_id.hex(), mailbox.verify_key.public_bytes_raw(), sealed.data))
    return out


async def _store(url: str, contacts: list[tuple[str, bytes, bytes]]) -> None:
    store = Store(make_engine(url))
    today = dt.datetime.now(dt.UTC).date()
    try:
        async with store.write() as session:
            boxes = {m: pk for m, pk, _ in contacts}
            await session.execute(
                insert(Mailbox), [{"id": m, "public_key": pk, "created_day": today} for m, pk in boxes.items()]
            )
            rows = [
                {
                    "id": f"bulk{i:08d}",
                    "mailbox_id": m,
                    "pool": "general",
                    "owner": "dana",
                    "day": today,
                    "bucket": E.parse_header(env).bucket,
                    "state": "complete",
                    "status": "new",
                    "status_day": today,
                    "attachments": 0,
                    "server_sealed": False,
                    "envelope": env,
                    "envelope_hash": hashlib.sha256(env).digest(),
                }
                for i, (m, _, env) in enumerate(contacts)
            ]
            for start in range(0, len(rows), 1000):
                await session.execute(insert(ContactRow), rows[start : start + 1000])
    finally:
        await store.close()


async def _recipients(url: str) -> list[HybridPublicKey]:
    store = Store(make_engine(url))
    try:
        published = await load_published(store)
    finally:
        await store.close()
    if published is None:
        raise RuntimeError("no directory published")
    return [key for _, key in published.directory.recipients("general", int(time.time()))]


class _RawOpen:
    """The primitive calls of opening one contact (one stanza, the body) and verifying its signature."""

    def __init__(self, key: HybridPrivateKey, envelope: bytes, payload: bytes) -> None:
        raw = key.private_bytes_raw()
        self.secret_x = raw[:32]
        self.mlkem = P.MlKemPrivate(raw[32:])
        self.eph_pub = P.x25519_public_from_secret(P.random_bytes(32))
        _, self.ct_m = P.mlkem768_encapsulate(key.public_key.mlkem)
        self.kid = key.key_id.raw
        self.wrap_key = P.random_bytes(32)
        self.content_key = P.random_bytes(32)
        self.wrapped = P.aead_seal(self.wrap_key, E.ZERO_NONCE, self.content_key, L.WRAP_AD + self.kid)
        bucket = E.parse_header(envelope).bucket
        self.header = envelope[: len(envelope) - E.BUCKETS[bucket] - P.AEAD_TAG_LEN]
        body_key = P.hkdf_sha256(self.content_key, salt=bytes(16), info=L.BODY_KEY, length=32)
        self.body = P.aead_seal(body_key, E.ZERO_NONCE, bytes(E.BUCKETS[bucket]), self.header)
        # The signed message is about as long as the payload (the label and the canonical body).
        self.signed = L.SIG_CONTACT + payload
        seed = P.random_bytes(32)
        self.public = P.ed25519_public_from_seed(seed)
        self.sig = P.ed25519_sign(seed, self.signed)

    def __call__(self) -> None:
        ss_x = P.x25519_shared(self.secret_x, self.eph_pub)
        ss_m = self.mlkem.decapsulate(self.ct_m)
        P.sha3_256(L.HYBRID_COMBINER, ss_m, ss_x, self.ct_m, self.eph_pub, self.secret_x, self.kid)
        content_key = P.aead_open(self.wrap_key, E.ZERO_NONCE, self.wrapped, L.WRAP_AD + self.kid)
        mac_key = P.hkdf_sha256(content_key, salt=bytes(16), info=L.COMMIT_KEY, length=32)
        P.constant_time_equal(P.hmac_sha256(mac_key, self.header[:-32]), self.header[-32:])
        body_key = P.hkdf_sha256(content_key, salt=bytes(16), info=L.BODY_KEY, length=32)
        P.aead_open(body_key, E.ZERO_NONCE, self.body, self.header)
        P.sha256(self.header, self.body)
        P.ed25519_verify(self.public, self.signed, self.sig)


def _baseline(raw: _RawOpen, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        raw()
    return time.perf_counter() - started


def _command(args: list[str], out: Path, n: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, check=False)  # noqa: S603 - our command
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"read-all failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    files = sum(1 for p in out.iterdir() if p.name.endswith(".txt"))
    if files != n:
        raise RuntimeError(f"read-all wrote {files} files, not {n}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.store == "postgresql":
            # A fresh database dropped afterwards (bench/pgdb.py says which server).
            with bench_database(None) as url:
                _run_world(root, url, args)
        else:
            _run_world(root, "", args)


def _run_world(root: Path, database_url: str, args: argparse.Namespace) -> None:
    world = World(root, database_url, "")
    try:
        asyncio.run(_bench(world, root, args))
    finally:
        world.intake.stop()
        world.staff.stop()


async def _bench(world: World, root: Path, args: argparse.Namespace) -> None:
    intake, staff = world.intake, world.staff
    intake.start()
    staff.start()
    secret = await world.enrol_dana()
    await world.list_dana()
    for service in (intake, staff):
        service.stop()
        service.start()
    await login(world.paths, password=PASSWORD, code=pyotp.TOTP(secret).at(int(time.time()) + 30))
    passphrase_file = root / "dana" / "passphrase"
    passphrase_file.write_text(str(PASSPHRASE))
    passphrase_file.chmod(0o600)

    recipients = await _recipients(world.url)
    started = time.perf_counter()
    contacts = _contacts(recipients, args.contacts)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    await _store(world.url, contacts)
    stored = time.perf_counter() - started
    size = len(contacts[0][2])
    print(
        f"{args.contacts:,} contacts ({len(recipients)} recipients, {size:,}-byte envelopes) sealed in "
        f"{generated:.1f} s, stored in {stored:.1f} s ({args.store})"
    )

    _, keys = open_handler_vault(world.paths, PASSPHRASE)
    own = next(k.private for k in keys.intake)
    opened = E.open_envelope(contacts[0][2], [own], expected_purpose=E.Purpose.CONTACT)
    raw = _RawOpen(own, contacts[0][2], opened.plaintext)
    command = [EXE, "handler", "read-all", "--vault", str(world.paths.vault), "--passphrase-file", str(passphrase_file)]
    out = root / "out"
    times_cmd, times_base = [], []
    for _ in range(args.rounds):
        times_base.append(await asyncio.to_thread(_baseline, raw, args.contacts))
        times_cmd.append(await asyncio.to_thread(_command, command, out, args.contacts))
    ratios = [b / c for b, c in zip(times_base, times_cmd, strict=True)]
    ratio = statistics.median(ratios)
    n = args.contacts
    print("| store | command | raw primitive loop | ratio (median) | ratio (min-max) | target |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.store} | {statistics.median(times_cmd):.2f} s ({n / statistics.median(times_cmd):,.0f}/s; "
        f"{min(times_cmd):.2f}-{max(times_cmd):.2f} s) "
        f"| {statistics.median(times_base):.2f} s ({n / statistics.median(times_base):,.0f}/s) "
        f"| {ratio:.2f} | {min(ratios):.2f}-{max(ratios):.2f} | >= 0.7: {'met' if ratio >= 0.7 else 'MISSED'} |"
    )


if __name__ == "__main__":
    main()
