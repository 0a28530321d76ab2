"""A handler pins independent witnesses at enrolment (in its vault); every later command then
refuses a directory whose log head K of them have not cosigned (protocol 8.6), as the
applicant's --witness does."""

from __future__ import annotations

from pathlib import Path

import pytest

from safepassage.client.handler import login, read_case
from safepassage.client.handler_vault import HandlerPaths, open_handler_vault
from safepassage.client.witness import cosign, init_witness
from safepassage.crypto.errors import BelowThreshold
from safepassage.crypto.threshold import KeySet
from safepassage.server.context import INTAKE
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import now_ts
from .handler_env import PASSPHRASE, PASSWORD, listed
from .integration_service import Integration
from .staff_deployment import StaffDeployment, enrol_with_client, staff  # noqa: F401
from .test_handler_e2e import CANARY, ROSTER, _contact

pytestmark = pytest.mark.timeout(240)


async def test_pinned_witnesses_guard_every_later_directory(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    dep = staff.dep
    org = dep.org.admin_set.fingerprint()
    witness = init_witness(tmp_path / "w")
    dep.app[INTAKE].witness_keys = (witness,)
    pinned = KeySet((witness,), 1)
    paths = HandlerPaths(tmp_path / "dana" / "dana.vault")

    async def enrol() -> list[str]:
        return (await enrol_with_client(staff, tmp_path, witnesses=pinned))[1]

    # The head is not cosigned yet: enrolment stops before the server, and leaves no vault.
    with pytest.raises(BelowThreshold):
        await enrol()
    assert not paths.vault.exists()
    await cosign(tmp_path / "w", dep.base_url, org)
    secrets = await enrol()
    _, keys = open_handler_vault(paths, PASSPHRASE)
    assert keys.witnesses == pinned

    start = now_ts() - 3600
    handlers = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    await staff.publish(dep.org.directory(2, handlers=(*handlers, listed(paths, ("general",)))))
    staff.clock.advance(30)
    await login(paths, password=PASSWORD, code=Totp(TotpSecret(secrets[-1])).code_at(counter_at(staff.clock())))
    case_id, _ = await _contact(staff)
    # The new head (the publication listing dana) has no cosignature: refused, nothing written.
    out = tmp_path / "case"
    with pytest.raises(BelowThreshold):
        await read_case(paths, PASSPHRASE, case_id, out)
    assert not out.exists()
    await cosign(tmp_path / "w", dep.base_url, org)
    reading = await read_case(paths, PASSPHRASE, case_id, out)
    assert reading.contact.message == CANARY
