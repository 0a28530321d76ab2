"""The hooks between enrolment and Tor: onion client keys on invitations, removal on revocation.

Through the real staff API (OpenAPI-checked) and the real commands; the
key files are what the staff onion is published to (server/staff/onion_clients.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from safepassage.client.onion import OnionClientKey
from safepassage.server import tor
from safepassage.server.staff import onion_clients
from safepassage.server.staff.accounts import INVITATION_HOURS

from .helpers import Org
from .staff_deployment import PASSWORD, StaffCalls
from .test_server_cli import EXE, run


def public_key() -> str:
    return OnionClientKey.generate().public_base32()


async def test_invitation_with_onion_key_admits_it_and_revocation_removes_it(staff_calls: StaffCalls) -> None:
    sd = staff_calls.sd
    folder = sd.dep.config.onion_clients_dir
    admin = await staff_calls.enrol_and_login("root-admin", "admin")
    key = public_key()
    answer = await staff_calls.call(
        "POST",
        "/staff/v1/admin/invitations",
        account=admin,
        json={"username": "erin", "role": "handler", "onion_key": key},
    )
    assert answer.status == 201, answer.body
    path = folder / "erin.auth"
    assert path.read_text() == f"descriptor:x25519:{key}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await onion_clients.authorised_keys(sd.dep.store, folder, now=sd.state.now()) == (tor.ClientKey(key),)

    # A malformed key is a precise 400 and writes nothing.
    for bad in ("x" * 52, key[:-1], "", key + "A"):
        answer = await staff_calls.call(
            "POST",
            "/staff/v1/admin/invitations",
            account=admin,
            json={"username": "fred", "role": "handler", "onion_key": bad},
        )
        assert answer.status == 400, (bad, answer.body)
    assert not (folder / "fred.auth").exists()
    # An unknown member is still refused.
    answer = await staff_calls.call(
        "POST", "/staff/v1/admin/invitations", account=admin, json={"username": "fred", "role": "handler", "onion": key}
    )
    assert answer.status == 400

    # Enrolled, then revoked: the key goes at once.
    erin = await staff_calls.enrol("erin")
    assert erin.username == "erin"
    answer = await staff_calls.call("POST", "/staff/v1/admin/staff/erin/revoke", account=admin)
    assert answer.status == 200
    assert not path.exists()
    assert await onion_clients.authorised_keys(sd.dep.store, folder, now=sd.state.now()) == ()


async def test_revoked_account_key_left_out_even_if_its_file_remains(staff_calls: StaffCalls) -> None:
    sd = staff_calls.sd
    folder = sd.dep.config.onion_clients_dir
    admin = await staff_calls.enrol_and_login("root-admin", "admin")
    await staff_calls.enrol("gail")
    gail, other = public_key(), public_key()
    onion_clients.register(folder, "gail", tor.ClientKey.parse(gail))
    await sd.invitation("hank")  # a live invitation: hank's key is admitted
    onion_clients.register(folder, "hank", tor.ClientKey.parse(other))
    answer = await staff_calls.call("POST", "/staff/v1/admin/staff/gail/revoke", account=admin)
    assert answer.status == 200
    # A crash between the database and the file: put the file back.
    onion_clients.register(folder, "gail", tor.ClientKey.parse(gail))
    assert await onion_clients.authorised_keys(sd.dep.store, folder, now=sd.state.now()) == (tor.ClientKey(other),)
    # A malformed file is skipped, not fatal for everyone else.
    (folder / "junk.auth").write_text("descriptor:x25519:nonsense\n")
    (folder / "junk.auth").chmod(0o600)
    assert await onion_clients.authorised_keys(sd.dep.store, folder, now=sd.state.now()) == (tor.ClientKey(other),)


async def test_only_active_accounts_and_live_invitations_are_admitted(staff_calls: StaffCalls) -> None:
    sd = staff_calls.sd
    folder = sd.dep.config.onion_clients_dir
    keys = {name: public_key() for name in ("ada", "bea", "cal", "dee", "eve", "zed")}

    async def admitted() -> set[str]:
        got = set(await onion_clients.authorised_keys(sd.dep.store, folder, now=sd.state.now()))
        return {name for name, key in keys.items() if tor.ClientKey(key) in got}

    # cal is invited and never redeems it; admitted only until the invitation expires.
    await sd.invitation("cal")
    onion_clients.register(folder, "cal", tor.ClientKey.parse(keys["cal"]))
    assert await admitted() == {"cal"}
    sd.clock.advance(INVITATION_HOURS * 3600)
    assert await admitted() == set()

    admin = await staff_calls.enrol_and_login("root-admin", "admin")
    await staff_calls.enrol("ada")  # active
    await sd.invitation("bea")  # invited, not yet redeemed
    dee = await sd.invitation("dee")  # enrolled, first code not yet confirmed (pending)
    answer = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": dee, "password": PASSWORD})
    assert answer.status == 201
    await staff_calls.enrol("eve")
    answer = await staff_calls.call("POST", "/staff/v1/admin/staff/eve/revoke", account=admin)
    assert answer.status == 200
    # Every name has a key file; eve's is back as after a crash, zed was never in the database.
    for name, key in keys.items():
        onion_clients.register(folder, name, tor.ClientKey.parse(key))
    assert await admitted() == {"ada", "bea", "dee"}

    # An invitation that lapses with its enrolment unconfirmed takes the key with it.
    sd.clock.advance(INVITATION_HOURS * 3600)
    assert await admitted() == {"ada"}
    # Invited again after revocation (revoking deleted eve's invitations): eve needs the onion to enrol.
    await sd.invitation("eve")
    assert await admitted() == {"ada", "eve"}


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("tor-cli") / "srv"
    assert run("server", "init", "--data", str(data), "--org", Org().admin_set.fingerprint()).returncode == 0
    assert run("staff", "init", "--data", str(data)).returncode == 0
    return data


def test_staff_invite_command_stores_the_onion_key(server_dir: Path) -> None:
    key = public_key()
    done = run("staff", "invite", "--data", str(server_dir), "--user", "ivan", "--role", "handler", "--onion-key", key)
    assert done.returncode == 0, done.stderr
    assert (server_dir / "onion-clients" / "ivan.auth").read_text() == f"descriptor:x25519:{key}\n"
    bad = run("staff", "invite", "--data", str(server_dir), "--user", "jill", "--role", "handler", "--onion-key", "zz")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: That is not a Tor client authorisation key")
    assert not (server_dir / "onion-clients" / "jill.auth").exists()


def test_server_refuses_bad_tor_settings(server_dir: Path) -> None:
    for env in ({"SAFEPASSAGE_TOR_CONTROL": "10.1.2.3:9051"}, {"SAFEPASSAGE_ONION_POW": "3"}):
        out = subprocess.run(
            [EXE, "server", "run", "--data", str(server_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, **env},
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: The server configuration is invalid")


def test_handler_onion_key_command(tmp_path: Path) -> None:
    vault = tmp_path / "me.vault"
    first = run("handler", "onion-key", "--vault", str(vault))
    assert first.returncode == 0, first.stderr
    printed = first.stdout.split("public):")[1].split()[0]
    assert tor.ClientKey.parse(printed).base32 == printed
    key_file = tmp_path / "me.vault.onion-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert printed.encode() not in key_file.read_bytes()  # the file holds the private half only
    again = run("handler", "onion-key", "--vault", str(vault))
    assert printed in again.stdout
    assert "Created" not in again.stdout
    auth = tmp_path / "onion-auth"
    auth.mkdir(mode=0o700)
    onion = "b" * 56 + ".onion"
    installed = run("handler", "onion-key", "--vault", str(vault), "--onion", onion, "--auth-dir", str(auth))
    assert installed.returncode == 0, installed.stderr
    [file] = list(auth.iterdir())
    assert file.read_text().startswith("b" * 56 + ":descriptor:x25519:")
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    lonely = run("handler", "onion-key", "--vault", str(vault), "--onion", onion)
    assert lonely.returncode != 0
    assert "error: " in lonely.stderr
    bad = run("handler", "onion-key", "--vault", str(vault), "--onion", "nope.onion", "--auth-dir", str(auth))
    assert bad.returncode != 0
    assert "56 letters" in bad.stderr
