"""A handler's or admin's client sends a password and a TOTP code to an onion address only when
the verified directory names it as the staff onion (a phishing copy would collect both).

Over loopback, with no Tor proxy: the directory comes from the loopback intake, and the check
answers before the client tries the onion (without the check, the answer would be that an onion
needs a Tor proxy). tests/test_tor_e2e.py covers the real onions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safepassage.client.errors import OnionMismatch
from safepassage.client.handler import login
from safepassage.client.handler_vault import HandlerPaths, ProfileError

from .deployment import now_ts
from .handler_env import PASSWORD, listed
from .integration_service import Integration
from .staff_deployment import StaffDeployment, staff  # noqa: F401
from .test_handler_e2e import ROSTER, _enrolled

pytestmark = pytest.mark.timeout(240)

STAFF_ONION = "s" * 56 + ".onion"
PHISH = "p" * 56 + ".onion"


async def test_login_refuses_an_onion_the_directory_does_not_name(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    paths, _ = await _enrolled(staff, integration, tmp_path)
    dep = staff.dep
    # No staff onion listed yet: an onion address cannot be checked, so nothing is sent to it.
    with pytest.raises(OnionMismatch, match="no staff onion"):
        await login(paths, password=PASSWORD, code="123456", staff=f"http://{STAFF_ONION}")
    start = now_ts() - 3600
    handlers = (*(dep.org.handler(h, p, start=start) for h, p in ROSTER.items()), listed(paths, ("general",)))
    await staff.publish(dep.org.directory(3, handlers=handlers, onions={"staff": STAFF_ONION}))
    with pytest.raises(OnionMismatch, match=STAFF_ONION):
        await login(paths, password=PASSWORD, code="123456", staff=f"http://{PHISH}")
    # Without the profile (the pinned organisation and intake), an onion is not trusted at all.
    bare = HandlerPaths(tmp_path / "elsewhere.vault")
    with pytest.raises(ProfileError):
        await login(bare, password=PASSWORD, code="123456", username="dana", staff=f"http://{STAFF_ONION}")
