"""``safepassage demo --tor``: the whole flow over onion services on a private Tor network, as a person runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safepassage.server.tornet import TorNetError, tor_binary

pytestmark = pytest.mark.timeout(400)

MESSAGE = "canary-tor-demo-33: the convoy leaves on Thursday"


def test_demo_over_tor(tmp_path: Path) -> None:
    # The demo finds tor the same way (PATH, then /usr/sbin/tor, which is often not on a user's PATH).
    try:
        tor_binary()
    except TorNetError:
        if not os.environ.get("CI"):
            pytest.skip("tor is not installed (make test installs it)")
    work = tmp_path / "work"
    message_file = tmp_path / "message.txt"
    message_file.write_text(MESSAGE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "safepassage.client.cli", "demo", "--tor", "--workdir", str(work), "--keep",
         "--message-file", str(message_file)],
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    out = done.stdout
    assert re.search(r"Tor network ready in \d+\.\d s", out)
    onions = re.findall(r"[a-z2-7]{56}\.onion", out)
    assert len(set(onions)) == 3
    for phrase in (
        "onion services on a private Tor network",
        "Tor client key",
        "from dana (signature verified)" if "routed the case to dana" in out else "from emil (signature verified)",
        "receipt verified",
        "none found: the server and the integration service hold no plaintext",
    ):
        assert phrase in out, phrase
    # The tors are gone and nothing readable was left in the server's or the service's files.
    assert not [line for line in out.splitlines() if line.strip().startswith("FOUND")]
    for part in ("server", "integration"):
        for path in (work / part).rglob("*"):
            if path.is_file() and "read" not in path.relative_to(work / part).parts:
                assert MESSAGE.encode() not in path.read_bytes(), path
    needle = str(work / "tornet").encode()
    leftover = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes() and b" Z " not in (proc / "stat").read_bytes():
                    leftover.append(proc.name)
            except OSError:
                continue
    assert leftover == []
