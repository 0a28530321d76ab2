"""``safepassage admin`` commands against the real staff and intake apps (SQLite and PostgreSQL).

The CLI runs in a worker thread (it calls ``asyncio.run`` itself) while the
apps serve from the test's event loop. The admins' vaults hold the test
organisation's admin keys; accounts are enrolled through the library, which
the ``admin enroll`` command wraps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from pathlib import Path

import aiohttp
import pyotp
import pytest
from sqlalchemy import select, update

from safepassage.client import admin as flows
from safepassage.client.cli import main
from safepassage.client.directory_changes import Changes
from safepassage.client.handler_vault import HandlerPaths, enrolment_document
from safepassage.client.witness import cosign, init_witness
from safepassage.crypto.directory import IntakeKey
from safepassage.crypto.encoding import b64e, canonical_json
from safepassage.crypto.errors import BelowThreshold
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.privatefile import write_private
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.vault import MIN_MEMLIMIT, MIN_OPSLIMIT, Passphrase, VaultContents, create_vault
from safepassage.server.context import INTAKE
from safepassage.server.db.models import AuditLogEntry, DirectoryProposal

from .deployment import now_ts
from .helpers import signing_key
from .staff_deployment import StaffDeployment, add_handlers, staff  # noqa: F401

pytestmark = pytest.mark.timeout(240)

PASSPHRASE = "an admin vault passphrase for tests"
PASSWORD = "an admin staff password for tests"
NAMES = ("ada", "bram", "cleo")


async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``safepassage ARGS`` in a thread; return the exit code, stdout and stderr."""

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        old_in = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            sys.stdin = old_in
        return code, out.getvalue(), err.getvalue()

    code, out, err = await asyncio.to_thread(run)
    assert "Traceback" not in err
    for secret in (PASSPHRASE, PASSWORD):
        assert secret not in out + err
    return code, out, err


async def _admin(
    sd: StaffDeployment, tmp: Path, name: str, key: SigningKey, witnesses: KeySet | None = None
) -> HandlerPaths:
    folder = tmp / name
    folder.mkdir(mode=0o700)
    paths = HandlerPaths(folder / "admin.vault")
    contents = VaultContents({flows.ADMIN_ENTRY: key.seed_bytes_raw()})
    create_vault(paths.vault, Passphrase(PASSPHRASE), contents, opslimit=MIN_OPSLIMIT, memlimit=MIN_MEMLIMIT)
    secret: list[str] = []

    def code(answer: flows.StaffEnrolment) -> str:
        secret.append(answer.totp_secret.reveal())
        return pyotp.TOTP(secret[0]).at(sd.clock())

    await flows.enroll_admin(
        paths,
        Passphrase(PASSPHRASE),
        staff=sd.base_url,
        intake=sd.dep.base_url,
        invitation=await sd.invitation(name, "admin"),
        password=PASSWORD,
        org=sd.dep.org.admin_set.fingerprint(),
        totp_code=code,
        witnesses=witnesses,
    )
    await flows.login(paths, password=PASSWORD, code=pyotp.TOTP(secret[0]).at(sd.clock() + 30))
    return paths


def _files(tmp: Path) -> tuple[Path, Path]:
    passphrase = tmp / "passphrase.txt"
    write_private(passphrase, PASSPHRASE.encode(), replace=False)
    return passphrase, tmp / "unused"


async def test_propose_sign_publish_and_status_from_the_command_line(
    staff: StaffDeployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    dep = staff.dep
    vaults = {name: await _admin(staff, tmp_path, name, key) for name, key in zip(NAMES, dep.org.admins, strict=True)}
    passphrase, _ = _files(tmp_path)
    # A new handler's intake-key.json, as `handler enroll` writes it.
    add_handlers(dep, "dave")
    start = now_ts() - 3600
    entry = IntakeKey.create(
        "dave", dep.org.identities["dave"], dep.org.intake["dave"].public_key, not_before=start, not_after=start + 86400
    )
    dave_file = tmp_path / "intake-key.json"
    write_private(
        dave_file, canonical_json(enrolment_document("dave", dep.org.identities["dave"], entry)), replace=False
    )

    ada = str(vaults["ada"].vault)
    code, out, err = await cli(
        "admin", "propose", "--vault", ada, "--add-handler", str(dave_file), "--pools", "general"
    )
    assert code == 0, err
    assert "+ HANDLER dave" in out
    assert dep.org.identities["dave"].verify_key.fingerprint() in out
    proposal_id = out.split("Proposal ", 1)[1].split(" ", 1)[0]

    # Not ready: one line, the server's code, exit 6.
    code, out, err = await cli("admin", "publish", proposal_id, "--vault", ada)
    assert code == 6
    assert err.startswith("error:")
    assert "not_ready" in err

    # Declining at the prompt signs nothing.
    code, out, err = await cli(
        "admin", "sign", proposal_id, "--vault", ada, "--passphrase-file", str(passphrase), stdin="n\n"
    )
    assert code == 1
    assert "+ HANDLER dave" in out
    code, out, err = await cli("admin", "status", "--vault", ada)
    assert "signed directory" not in out

    for stage in ("directory", "head"):
        for name in ("ada", "bram"):
            code, out, err = await cli(
                "admin",
                "sign",
                proposal_id,
                "--vault",
                str(vaults[name].vault),
                "--passphrase-file",
                str(passphrase),
                "--yes",
            )
            assert code == 0, err
            assert f"Signed the {stage}" in out
    code, out, err = await cli("admin", "status", "--vault", ada)
    assert code == 0, err
    assert "signed head" in out
    code, out, err = await cli("admin", "publish", proposal_id, "--vault", ada)
    assert code == 0, err
    assert "Published directory version 2" in out
    code, out, err = await cli("admin", "status", "--vault", str(vaults["cleo"].vault))
    assert code == 0, err
    assert "dave (dave), pools: general" in out
    assert "No open proposals." in out

    # The audit log names the ceremony, and verifies; an edited entry is caught and named.
    code, out, err = await cli("admin", "audit", "verify", "--vault", ada)
    assert code == 0, err
    assert "Audit log verified" in out
    async with dep.store.read() as session:
        actions = [r.action for r in (await session.execute(select(AuditLogEntry))).scalars()]
    assert {"propose", "sign", "publish"} <= set(actions)
    async with dep.store.write() as session:
        await session.execute(
            update(AuditLogEntry).where(AuditLogEntry.action == "publish").values(detail="nothing happened")
        )
    code, out, err = await cli("admin", "audit", "verify", "--vault", ada)
    assert code == 3
    assert "DOES NOT VERIFY" in out
    assert err.startswith("error:")


async def test_hostile_and_mistaken_admin_commands_get_one_line(
    staff: StaffDeployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    dep = staff.dep
    ada = await _admin(staff, tmp_path, "ada", dep.org.admins[0])
    outsider = await _admin(staff, tmp_path, "mallory", signing_key("not-an-admin"))
    passphrase, _ = _files(tmp_path)
    code, out, err = await cli("admin", "propose", "--vault", str(ada.vault))
    assert code == 2
    assert err.splitlines()[0] == "error: That input is not valid: no change given."
    code, out, err = await cli("admin", "propose", "--vault", str(ada.vault), "--add-pool", "bad pool")
    assert code != 0
    assert err.startswith("error:")
    code, out, err = await cli("admin", "propose", "--vault", str(ada.vault), "--remove-handler", "nobody")
    assert code != 0
    assert "no handler nobody" in err
    code, out, err = await cli(
        "admin", "propose", "--vault", str(ada.vault), "--add-pool", "science2:Science two:ru,en"
    )
    assert code == 0, err
    proposal_id = out.split("Proposal ", 1)[1].split(" ", 1)[0]
    # A key outside the admin set is refused by the client before anything is sent.
    code, out, err = await cli(
        "admin", "sign", proposal_id, "--vault", str(outsider.vault), "--passphrase-file", str(passphrase), "--yes"
    )
    assert code == 3
    assert "not in the admin set" in err
    code, out, err = await cli("admin", "sign", "zz", "--vault", str(ada.vault), "--passphrase-file", str(passphrase))
    assert code != 0
    assert "32 hexadecimal digits" in err
    # An admin vault with the wrong passphrase: one line, nothing signed.
    wrong = tmp_path / "wrong.txt"
    write_private(wrong, b"not the passphrase of this vault", replace=False)
    code, out, err = await cli(
        "admin", "sign", proposal_id, "--vault", str(ada.vault), "--passphrase-file", str(wrong), "--yes"
    )
    assert code != 0
    assert err.startswith("error:")


def test_admin_init_makes_a_vault_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passphrase, _ = _files(tmp_path)
    vault = tmp_path / "new.vault"
    assert main(["admin", "init", "--vault", str(vault), "--passphrase-file", str(passphrase)]) == 0
    out = capsys.readouterr().out
    assert "public key:" in out
    assert "fingerprint:" in out
    assert vault.stat().st_mode & 0o077 == 0
    assert main(["admin", "init", "--vault", str(vault), "--passphrase-file", str(passphrase)]) != 0
    assert capsys.readouterr().err.startswith("error:")


async def test_admin_invites_a_handler_who_enrols_with_the_code(
    staff: StaffDeployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    ada = await _admin(staff, tmp_path, "ada", staff.dep.org.admins[0])
    code, out, err = await cli("admin", "invite", "--vault", str(ada.vault), "--user", "dave", "--role", "handler")
    assert code == 0, err
    invitation = out.splitlines()[1].strip()
    assert "cannot receive contacts until M admins" in out
    # The code opens enrolment for that name (used up at the first code, tested with the staff app).
    assert await staff_calls_enroll(staff, invitation) == 201
    assert await staff_calls_enroll(staff, "x" * 43) == 403
    code, out, err = await cli("admin", "invite", "--vault", str(ada.vault), "--user", "Bad Name", "--role", "handler")
    assert code != 0
    assert err.startswith("error:")


async def staff_calls_enroll(sd: StaffDeployment, invitation: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sd.base_url + "/staff/v1/enroll", json={"invitation": invitation, "password": PASSWORD}
        ) as response,
    ):
        return response.status


async def test_propose_options_each_show_in_the_diff(
    staff: StaffDeployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Every kind of change admin propose takes reaches the proposal, and the diff names it."""
    dep = staff.dep
    ada = await _admin(staff, tmp_path, "ada", dep.org.admins[0])
    signing, encryption = signing_key("next integration"), dep.org.integration_key.public_key
    onion = "b" * 56 + ".onion"
    code, out, err = await cli(
        "admin", "propose", "--vault", str(ada.vault),
        "--organisation", "Renamed Org",
        "--threshold", "3",
        "--integration-signing-key", b64e(signing.verify_key.public_bytes_raw()),
        "--integration-key", b64e(encryption.public_bytes_raw()),
        "--onion", f"public={onion}",
        "--set-policy", "intake_key_days=5",
        "--set-policy", "retention_case_days=30",
    )  # fmt: skip
    assert code == 0, err
    assert "Organisation name: 'Renamed Org'" in out
    assert "INTEGRATION SERVICE keys:" in out
    assert signing.verify_key.fingerprint() in out
    assert f"Onion public: None -> '{onion}'" in out
    assert "Policy intake_key_days: 7 -> 5" in out
    assert "Policy retention_case_days: None -> 30" in out
    assert "ADMIN SET: 3 of 3 must sign (was 2 of 3)" in out
    # Mistakes in those options: one error line each, nothing proposed.
    async with dep.store.read() as session:
        proposals = len((await session.scalars(select(DirectoryProposal))).all())
    for wrong in (
        ("--onion", "public"),
        ("--integration-key", b64e(encryption.public_bytes_raw())),  # no signing key with it
        ("--set-policy", "intake_key_days"),
        ("--unset-policy", "never_set"),
        ("--set-policy", "intake_key_days=5", "--unset-policy", "intake_key_days"),
        ("--receipt-key", "not base64"),
    ):
        code, out, err = await cli("admin", "propose", "--vault", str(ada.vault), *wrong)
        assert code == 2, (wrong, err)
        assert err.startswith("error:"), wrong
        assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[0]], wrong
    async with dep.store.read() as session:
        assert len((await session.scalars(select(DirectoryProposal))).all()) == proposals == 1


async def test_an_admin_with_a_pinned_witness_signs_only_on_a_cosigned_head(
    staff: StaffDeployment,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Witnesses pinned at admin enrol: 'admin sign' refuses to build on a directory whose head
    the witness has not cosigned (a split view shown to this admin), and signs once it has."""
    dep = staff.dep
    org = dep.org.admin_set.fingerprint()
    witness = init_witness(tmp_path / "w")
    dep.app[INTAKE].witness_keys = (witness,)
    ada = await _admin(staff, tmp_path, "ada", dep.org.admins[0], KeySet((witness,), 1))
    summary, _ = await flows.propose(ada, org, Changes(organisation="Renamed"))
    with pytest.raises(BelowThreshold):
        await flows.sign(ada, Passphrase(PASSPHRASE), summary.proposal_id, lambda _: True)
    await cosign(tmp_path / "w", dep.base_url, org)
    signed = await flows.sign(ada, Passphrase(PASSPHRASE), summary.proposal_id, lambda _: True)
    assert signed.stage == "directory"
