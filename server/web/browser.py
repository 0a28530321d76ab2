"""Does this request look like it comes from Tor Browser over an onion address?

Only what the browser sends anyway is read (User-Agent and Host): no script, no
canvas, no font or timing probe. Tor Browser sends one User-Agent for everyone:
Firefox ESR's, with the ``rv:`` and ``Firefox/`` versions equal and no other
product token. That is a hint, not proof (any browser can send it), so a
failed check shows a warning and never refuses the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIREFOX_RFP = re.compile(r"Mozilla/5\.0 \([^()]{1,80}; rv:(\d{2,3})\.0\) Gecko/20100101 Firefox/(\d{2,3})\.0")
_ONION_HOST = re.compile(r"[a-z2-7]{56}\.onion(:\d{1,5})?")


@dataclass(frozen=True, slots=True)
class BrowserCheck:
    tor_browser_like: bool
    onion_address: bool

    @property
    def warn(self) -> bool:
        return not (self.tor_browser_like and self.onion_address)


def check_browser(user_agent: str, host: str) -> BrowserCheck:
    match = _FIREFOX_RFP.fullmatch(user_agent)
    return BrowserCheck(
        tor_browser_like=bool(match and match.group(1) == match.group(2)),
        onion_address=bool(_ONION_HOST.fullmatch(host.lower())),
    )
