"""Does this request look like it comes from Tor Browser over an onion address?

Only what the browser sends anyway is read (User-Agent and Host): no script, no
canvas, no font or timing probe. Tor Browser sends one User-Agent per platform
family: Firefox ESR's, with the ``rv:`` and ``Firefox/`` versions equal and no
other product token; on the desktop the Gecko token is ``20100101``, on Android
(``Android 10; Mobile``, whatever the phone) it repeats the version. That is a
hint, not proof (any browser can send it), so a failed check shows a warning
and never refuses the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIREFOX_RFP = re.compile(
    r"Mozilla/5\.0 \((?P<platform>[^()]{1,80}); rv:(?P<rv>\d{2,3})\.0\) "
    r"Gecko/(?P<gecko>20100101|\d{2,3}\.0) Firefox/(?P<firefox>\d{2,3})\.0"
)
_ONION_HOST = re.compile(r"[a-z2-7]{56}\.onion(:\d{1,5})?")


@dataclass(frozen=True, slots=True)
class BrowserCheck:
    tor_browser_like: bool
    onion_address: bool

    @property
    def warn(self) -> bool:
        return not (self.tor_browser_like and self.onion_address)


def check_browser(user_agent: str, host: str) -> BrowserCheck:
    return BrowserCheck(
        tor_browser_like=_tor_browser_like(user_agent),
        onion_address=bool(_ONION_HOST.fullmatch(host.lower())),
    )


def _tor_browser_like(user_agent: str) -> bool:
    match = _FIREFOX_RFP.fullmatch(user_agent)
    if match is None or match["rv"] != match["firefox"]:
        return False
    if match["platform"] == "Android 10; Mobile":
        return match["gecko"] == f"{match['rv']}.0"
    return match["gecko"] == "20100101"
