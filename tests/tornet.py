"""The session's private Tor network (safepassage.server.tornet), as a pytest fixture."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from safepassage.server.tornet import ONION_LOG, TorNet, TorNetError, check_torrc, free_port, private_network

__all__ = ["TorNet", "TorNetError", "check_torrc", "free_port", "tor_network", "tor_logs_on_failure"]


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


def tor_logs_on_failure(item: pytest.Item, report: pytest.TestReport) -> None:
    """Attach the onion-side tors' logs to a failed test that used the network: a connection
    that failed in CI can only be understood from what the tors saw."""
    if report.when != "call" or not report.failed:
        return
    net = getattr(item, "funcargs", {}).get("tor_network")
    if not isinstance(net, TorNet):
        return
    for node in (net.service, net.applicant, net.handler):
        text = f"{node.log_tail(20)}\n--- {ONION_LOG} ---\n{node.log_tail(120, ONION_LOG)}"
        report.sections.append((f"tor {node.name}", text))
