"""`safepassage server backup` / `restore`: a restored server's data opens with the handlers' keys.

On SQLite and on PostgreSQL (the ``deployment`` fixture): an applicant writes
through the real intake, the operator backs up with the command, restores into
a new folder (and, for PostgreSQL, a new empty database), and the restored
database's sealed contact opens with the handler's intake key; the keys and
onion files are the same bytes. Hostile cases: wrong passphrase, a swapped
database file, a non-empty target; none leaves anything behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from safepassage.client.applicant import send_contact
from safepassage.client.intake_api import IntakeClient
from safepassage.client.onion import OnionClientKey
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.intake import Contact
from safepassage.server import tor
from safepassage.server.config import load_config, write_config
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.keys import load_keys
from safepassage.server.staff import onion_clients

from .deployment import Deployment, now_ts
from .helpers import Org
from .pg import fresh_database
from .test_server_cli import EXE

CANARY = "canary-backup-5d1: the names are in the second file"
PASSPHRASE = "correct horse battery staple backup"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "server", *args], capture_output=True, text=True, timeout=300, check=False)


@contextlib.contextmanager
def target_database(request: pytest.FixtureRequest, dep: Deployment) -> Iterator[str]:
    if not dep.config.database_url:
        yield ""
        return
    with fresh_database(request.getfixturevalue("pg_server")) as url:
        yield url


async def test_backup_restores_a_server_whose_data_opens(
    deployment: Deployment, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dep = deployment
    data = dep.config.data_dir
    settings: dict[str, str | int] = {"org_fingerprint": dep.config.org_fingerprint}
    if dep.config.database_url:
        settings["database_url"] = dep.config.database_url
    write_config(data, **settings)
    (data / "config.toml").chmod(0o600)
    tor.OnionKey("ED25519-V3:" + "B" * 86 + "==").save(dep.config.onion_key_path("public"))
    onion_clients.register(
        dep.config.onion_clients_dir, "dana", tor.ClientKey.parse(OnionClientKey.generate().public_base32())
    )

    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.config.org_fingerprint, None, now_ts())
        sent = await send_contact(
            client, trusted, pool="general", language="en", message=CANARY, fields={}, attachments=[]
        )

    pw = tmp_path / "pass"
    pw.write_text(PASSPHRASE + "\n")
    out = tmp_path / "backup"
    made = cli("backup", "--data", str(data), "--out", str(out), "--passphrase-file", str(pw))
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["secrets.vault", "manifest.json", "database.pgdump" if dep.config.database_url else "database.sqlite"]
    )
    # No key and no plaintext lies open in the backup.
    receipt_seed = load_keys(dep.config.keys_dir).receipt.seed_bytes_raw()
    for f in out.iterdir():
        raw = f.read_bytes()
        assert CANARY.encode() not in raw
        assert receipt_seed not in raw
        assert b"B" * 86 not in raw
    assert cli("backup", "--data", str(data), "--out", str(out), "--passphrase-file", str(pw)).returncode == 2

    with target_database(request, dep) as url:
        extra = ["--database-url", url] if url else []
        wrong = tmp_path / "wrong"
        wrong.write_text("not the passphrase at all, sorry\n")
        restored = tmp_path / "restored"
        bad = cli("restore", "--backup", str(out), "--data", str(restored), "--passphrase-file", str(wrong), *extra)
        assert bad.returncode == 3, bad.stderr
        assert not restored.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

        done = cli("restore", "--backup", str(out), "--data", str(restored), "--passphrase-file", str(pw), *extra)
        assert done.returncode == 0, done.stderr
        config = load_config(restored)
        assert load_keys(config.keys_dir).receipt.seed_bytes_raw() == receipt_seed
        for rel in ("keys/onion-public.key", "onion-clients/dana.auth", "keys/totp.key"):
            if (data / rel).exists():
                assert (restored / rel).read_bytes() == (data / rel).read_bytes()
                assert (restored / rel).stat().st_mode & 0o077 == 0
        store = Store(make_engine(config.url))
        try:
            async with store.read() as session:
                row = await session.get(ContactRow, sent.contact_id)
                assert row is not None
                envelope = row.envelope
                count = len((await session.execute(select(ContactRow.id))).all())
        finally:
            await store.close()
        assert count == 1
        opened = E.open_envelope(envelope, list(dep.org.intake.values()), expected_purpose=E.Purpose.CONTACT)
        assert Contact.open_payload(opened.plaintext).message == CANARY

        again = cli("restore", "--backup", str(out), "--data", str(restored), "--passphrase-file", str(pw), *extra)
        assert again.returncode == 2
        assert "not empty" in again.stderr


def test_restore_refuses_a_swapped_database(tmp_path: Path) -> None:
    data = tmp_path / "srv"

    assert cli("init", "--data", str(data), "--org", Org().admin_set.fingerprint()).returncode == 0
    pw = tmp_path / "pass"
    pw.write_text(PASSPHRASE)
    out = tmp_path / "backup"
    assert cli("backup", "--data", str(data), "--out", str(out), "--passphrase-file", str(pw)).returncode == 0
    db = out / "database.sqlite"
    db.write_bytes(db.read_bytes() + b"\0")
    refused = cli("restore", "--backup", str(out), "--data", str(tmp_path / "r"), "--passphrase-file", str(pw))
    assert refused.returncode == 2
    assert "does not match the manifest" in refused.stderr
    # Manifest rewritten to match: the hash sealed in the vault still catches it.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    refused = cli("restore", "--backup", str(out), "--data", str(tmp_path / "r"), "--passphrase-file", str(pw))
    assert refused.returncode == 2
    assert "not the one this backup's vault was made with" in refused.stderr
    assert not (tmp_path / "r").exists()
