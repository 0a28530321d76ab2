"""One accepted submission per challenge, and at most one Argon2id evaluation, also when requests race.

On SQLite the server holds a challenge's spent mark in memory while it checks
the work and commits it with the submission (docs/protocol.md 12.5); these
tests hold it to what committing first guaranteed: parallel requests with one
challenge cost one evaluation and store one contact, and a challenge whose
submission is refused after the work was checked (quota) is used up all the same.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy import func, select

from safepassage.crypto import pow as W
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Contact, SpentChallenge

from .deployment import Deployment
from .intake_calls import Applicant, Calls, seal_for
from .test_intake_server import recipients


@pytest.fixture
async def calls(deployment: Deployment) -> Calls:  # type: ignore[misc]
    async with aiohttp.ClientSession() as session:
        yield Calls(deployment.base_url, session)


async def _count(dep: Deployment, model: type) -> int:
    async with dep.store.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_parallel_requests_with_one_challenge(
    calls: Calls, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluations = 0
    real = W.verify_work

    def counting(checked: W.CheckedChallenge, counter: int) -> W.VerifiedPow:
        nonlocal evaluations
        evaluations += 1
        return real(checked, counter)

    monkeypatch.setattr(W, "verify_work", counting)
    challenge = await calls.challenge()
    pow_header = f"{challenge.to_text()}.{W.solve(challenge)}"
    applicants = [Applicant() for _ in range(8)]
    bodies = [seal_for(recipients(deployment), a.contact()).data for a in applicants]
    answers = await asyncio.gather(
        *(
            calls.call(
                "POST",
                "/api/v1/contacts?pool=general",
                data=data,
                headers=a.submission_headers(data, "general", 0, pow_header),
            )
            for a, data in zip(applicants, bodies, strict=True)
        )
    )
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [409] * 7, statuses
    assert evaluations == 1
    assert await _count(deployment, Contact) == 1
    assert await _count(deployment, SpentChallenge) == 1
    assert deployment.app[INTAKE].pow_in_flight == set()


async def test_a_challenge_refused_after_its_work_is_used_up(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    quota = deployment.config.mailbox_daily_quota
    for _ in range(quota):
        data = seal_for(recipients(deployment), applicant.contact()).data
        headers = applicant.submission_headers(data, "general", 0, await calls.pow_header())
        ok = await calls.call("POST", "/api/v1/contacts?pool=general", data=data, headers=headers)
        assert ok.status == 201, ok.body
    data = seal_for(recipients(deployment), applicant.contact()).data
    pow_header = await calls.pow_header()
    over = await calls.call(
        "POST",
        "/api/v1/contacts?pool=general",
        data=data,
        headers=applicant.submission_headers(data, "general", 0, pow_header),
    )
    assert over.status == 429
    # The same solved challenge, for another applicant: spent, not reusable.
    other = Applicant()
    data = seal_for(recipients(deployment), other.contact()).data
    again = await calls.call(
        "POST",
        "/api/v1/contacts?pool=general",
        data=data,
        headers=other.submission_headers(data, "general", 0, pow_header),
    )
    assert again.status == 409
    assert again.body["error"]["code"] == "pow_reused"
    assert deployment.app[INTAKE].pow_in_flight == set()
