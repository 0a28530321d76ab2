"""`safepassage handler ...` end to end against the stand-ins, in-process (tests/fake_staff.py).

The commands run through :func:`safepassage.client.cli.main` with the
organisation served from a background thread, at the vault's default cost, as
a handler would run them: secrets from files or prompts, never in the output.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from safepassage.client.applicant import send_contact
from safepassage.client.cli import main
from safepassage.client.handler_vault import HandlerPaths
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E

from .fake_intake import FakeIntake, honest_view
from .fake_staff import FakeOrg
from .handler_env import FP, ORG, PASSWORD, listed, publish

pytestmark = pytest.mark.timeout(180)

PASSPHRASE = "a long vault passphrase, typed by dana"
SECRET = pyotp.random_base32(32)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> Any:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for secret in (PASSPHRASE, PASSWORD, SECRET):
        assert secret not in err
    return code, out, err


def totp(ahead: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(int(time.time()) + 30 * ahead)


def test_handler_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    intake = FakeIntake(honest_view([ORG.signed(ORG.directory())], ORG.admins[:2]), receipt_key=ORG.receipt)
    publish(intake)
    org = FakeOrg.around(intake, ORG.integration_signing)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    vault = home / "dana.vault"
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    blob = os.urandom(E.CHUNK_DATA_MAX + 1)
    attachment = tmp_path / "plans.pdf"
    attachment.write_bytes(blob)
    monkeypatch.setenv("SAFEPASSAGE_HANDLER_VAULT", str(vault))
    secrets = ["--passphrase-file", str(passphrase_file)]

    with org.in_thread() as url:
        invitation = org.staff.invite("dana", secret=SECRET)
        code, out, err = cli(
            monkeypatch, capsys,
            "handler", "enroll", "--staff", url, "--invite", invitation, "--intake", url, "--org", FP,
            *secrets, "--password-file", str(password_file),
            stdin=totp() + "\n",
        )  # fmt: skip
        assert code == 0, err
        assert "otpauth://totp/" in out
        assert "█" in out  # the QR code, as text
        assert "handler id            dana" in out
        assert "identity fingerprint" in out
        assert "intake-key fingerprint" in out
        assert str(home / "intake-key.json") in out
        assert stat.S_IMODE(os.stat(vault).st_mode) == 0o600

        publish(intake, listed(HandlerPaths(vault)))
        code, out, err = cli(
            monkeypatch, capsys, "handler", "login", "--password-file", str(password_file), "--totp-code", totp(1)
        )
        assert code == 0, err
        assert "Logged in as dana (handler)" in out

        async def applicant() -> str:
            async with IntakeClient(url) as client:
                trusted = await fetch_trusted_directory(client, FP, None, int(time.time()))
                sent = await send_contact(
                    client, trusted, pool="general", language="en", message="Hello \x1b[31mred\u202e canary-cli",
                    fields={"role": "attaché"}, attachments=[attachment],
                )  # fmt: skip
            return sent.contact_id

        case_id = asyncio.run(applicant())
        org.staff.owners[case_id] = "dana"

        code, out, err = cli(monkeypatch, capsys, "handler", "inbox")
        assert code == 0, err
        assert case_id in out
        assert "new" in out

        out_dir = tmp_path / "case"
        code, out, err = cli(monkeypatch, capsys, "handler", "read", case_id, "--out", str(out_dir), *secrets)
        assert code == 0, err
        assert "Verified on this machine:" in out
        assert "mailbox signature" in out
        assert "  | Hello [31mred canary-cli" in out
        assert "\x1b" not in out
        assert "\u202e" not in out
        assert "role:\n  | attaché" in out
        assert (out_dir / "plans.pdf").read_bytes() == blob

        code, out, err = cli(
            monkeypatch, capsys, "handler", "reply", case_id, "--message-file", "-", *secrets, stdin="We hear you."
        )
        assert code == 0, err
        assert "Reply" in out

        code, out, err = cli(monkeypatch, capsys, "handler", "status", case_id, "reviewing")
        assert code == 0, err
        assert org.staff.status[case_id] == "reviewing"

        code, out, err = cli(
            monkeypatch, capsys,
            "handler", "escalate", case_id, "--note", "-", "--integration", url, *secrets,
            stdin="Credible.",
        )  # fmt: skip
        assert code == 0, err
        assert "escalated as package" in out
        assert "1 reply(ies) from this vault" in out
        assert org.staff.status[case_id] == "escalated"

        # A wrong passphrase: one clear error, nothing written.
        bad = tmp_path / "bad"
        bad.write_text("not the right passphrase at all")
        fresh = tmp_path / "fresh"
        code, out, err = cli(
            monkeypatch, capsys, "handler", "read", case_id, "--out", str(fresh), "--passphrase-file", str(bad)
        )
        assert code == 3
        assert err.startswith("error: The passphrase is wrong")
        assert not fresh.exists()

        code, out, err = cli(monkeypatch, capsys, "handler", "logout")
        assert code == 0, err
        code, out, err = cli(monkeypatch, capsys, "handler", "inbox")
        assert code == 6
        assert "not logged in" in err
        assert "hint: Run: safepassage handler login" in err
