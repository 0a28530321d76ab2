"""Shared test settings.

Hypothesis runs a fixed, derandomised search in CI so a red build is
reproducible; locally it explores with the default random seed.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings

# Fixtures shared by the server tests: a real PostgreSQL and a running intake.
from .browser import browser, browser_js  # noqa: F401  (Debian chromium for the web page tests)
from .deployment import database_url, deployment  # noqa: F401
from .integration_service import integration, start_service  # noqa: F401
from .pg import pg_server  # noqa: F401
from .staff_deployment import public_calls, staff, staff_calls  # noqa: F401
from .tornet import tor_logs_on_failure, tor_network  # noqa: F401

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    tor_logs_on_failure(item, report)
    return report
