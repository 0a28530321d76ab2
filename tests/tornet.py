"""The session's private Tor network (safepassage.server.tornet), as a pytest fixture."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from safepassage.server.tornet import TorNet, TorNetError, check_torrc, free_port, private_network

__all__ = ["TorNet", "TorNetError", "check_torrc", "free_port", "tor_network"]


@pytest.fixture(scope="session")
def tor_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorNet]:
    """One private Tor network for the whole test session (about 10-25 s to build).

    Without tor: skipped on a developer's machine, an error under CI=true
    (where ``make test`` installs it), never a silent pass.
    """
    if shutil.which("tor") is None and not Path("/usr/sbin/tor").exists() and not os.environ.get("CI"):
        pytest.skip("tor is not installed (make test installs it)")
    with private_network(tmp_path_factory.mktemp("tornet")) as net:
        yield net
