"""Which directory the integration service trusts, and what it does when it cannot trust one.

The service keeps the last log head it accepted in its data folder (like the
applicant CLI's --state): a history that forks from it or rolls it back stops
every delivery for good; an unreachable intake leaves the last verified
directory in use only until it is too old.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from safepassage.client.errors import ServerUnreachable
from safepassage.client.trust import HeadState
from safepassage.client.witness import cosign, init_witness
from safepassage.crypto.directory import Directory, IntegrationService
from safepassage.crypto.encoding import b64e
from safepassage.crypto.errors import BadSignature, SafePassageError
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.translog import MerkleLog, TreeHead, leaf_hash, root_hash
from safepassage.server.config import ConfigError
from safepassage.server.context import INTAKE
from safepassage.server.errors import ApiError
from safepassage.server.integration.config import IntegrationConfig

from .deployment import Deployment
from .helpers import Org, signing_key
from .integration_service import Integration


async def _delivery_status(integration: Integration) -> tuple[int, str]:
    before = await integration.snapshot()
    answer = await integration.post(integration.package())
    if answer.status != 201:
        assert await integration.snapshot() == before
        return answer.status, answer.body["error"]["code"]
    return answer.status, ""


async def test_the_remembered_head_follows_the_log(integration: Integration) -> None:
    state = HeadState.load(integration.config.state_path)
    assert state is not None
    assert state.head.size == 1
    await integration.publish(replace(integration.deployment.directory, version=2))
    state = HeadState.load(integration.config.state_path)
    assert state is not None
    assert (state.head.size, state.version) == (2, 2)


async def test_a_forked_log_stops_every_delivery(integration: Integration) -> None:
    org = integration.org
    # What the service remembers is a log of the same size with another first entry: a split view.
    other, _ = org.publication(replace(integration.deployment.directory, organisation="Someone else"), MerkleLog())
    leaves = (leaf_hash(other.to_bytes()),)
    forged = HeadState(org.admin_set.fingerprint(), TreeHead(1, root_hash(leaves), 1_700_000_000), 1, leaves)
    forged.save(integration.config.state_path)
    await integration.service.keeper.refresh()
    assert await _delivery_status(integration) == (503, "directory_untrusted")
    # It does not recover by itself, and the evidence is kept.
    await integration.service.keeper.refresh()
    assert await _delivery_status(integration) == (503, "directory_untrusted")
    assert HeadState.load(integration.config.state_path) == forged


async def test_a_rolled_back_log_stops_every_delivery(integration: Integration) -> None:
    state = HeadState.load(integration.config.state_path)
    assert state is not None
    # The service once saw a longer log than the intake shows now.
    leaves = (*state.leaves, leaf_hash(b"a later directory"))
    longer = HeadState(state.org, TreeHead(2, root_hash(leaves), state.head.timestamp), 2, leaves)
    longer.save(integration.config.state_path)
    await integration.service.keeper.refresh()
    assert await _delivery_status(integration) == (503, "directory_untrusted")


@dataclass
class Scripted:
    """A directory source that answers from a script (injected as the brief allows for tests)."""

    answers: list[Directory | SafePassageError]

    async def fetch(self) -> Directory:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, SafePassageError):
            raise answer
        return answer


async def test_an_unreachable_intake_leaves_the_directory_in_use_until_it_is_too_old(
    start_service, deployment: Deployment
) -> None:
    source = Scripted([deployment.directory, ServerUnreachable("timed out")])
    async with start_service(source) as integration:
        assert await _delivery_status(integration) == (201, "")
        keeper = integration.service.keeper
        await keeper.refresh()  # unreachable: the verified directory stays
        assert await _delivery_status(integration) == (201, "")
        verified_at = keeper._verified_at
        keeper.clock = lambda: verified_at + integration.config.directory_max_age_seconds + 1
        assert await _delivery_status(integration) == (503, "no_directory")


async def test_a_failed_check_drops_the_directory_at_once(start_service, deployment: Deployment) -> None:
    source = Scripted([deployment.directory, BadSignature("a tree head")])
    async with start_service(source) as integration:
        assert await _delivery_status(integration) == (201, "")
        await integration.service.keeper.refresh()
        assert await _delivery_status(integration) == (503, "no_directory")


async def test_a_directory_naming_another_service_key_is_not_used(start_service, deployment: Deployment) -> None:
    other = replace(
        deployment.directory,
        integration=IntegrationService(
            signing_key("someone else's service").verify_key, deployment.directory.integration.encryption_keys
        ),
    )
    async with start_service(Scripted([other])) as integration:
        assert await _delivery_status(integration) == (503, "no_directory")


async def test_the_service_starts_without_an_intake_and_refuses_until_it_has_a_directory(start_service) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with start_service(None, intake_url=closed) as integration:
        assert await _delivery_status(integration) == (503, "no_directory")


async def test_a_pinned_witness_must_have_cosigned_the_head(
    start_service,
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    """witness_keys in the service's config: no directory (503) until the witness cosigned the head."""
    witness = init_witness(tmp_path / "w")
    deployment.app[INTAKE].witness_keys = (witness,)
    pinned = b64e(witness.public_bytes_raw())
    async with start_service(None, witness_keys=pinned) as integration:
        assert integration.config.witnesses() == KeySet((witness,), 1)
        assert await _delivery_status(integration) == (503, "no_directory")
        await cosign(tmp_path / "w", deployment.base_url, deployment.org.admin_set.fingerprint())
        await integration.service.keeper.refresh()
        assert await _delivery_status(integration) == (201, "")


def test_witness_settings_are_checked(tmp_path: Path) -> None:
    key = b64e(signing_key("a witness").verify_key.public_bytes_raw())
    base = {"org_fingerprint": " ".join(["12345"] * 10), "intake_url": "http://127.0.0.1:1"}
    good = IntegrationConfig(tmp_path, **base, witness_keys=key).validate()  # type: ignore[arg-type]
    assert good.witnesses() == KeySet((signing_key("a witness").verify_key,), 1)
    assert IntegrationConfig(tmp_path, **base).validate().witnesses() is None  # type: ignore[arg-type]
    for bad in ({"witness_keys": "not-a-key"}, {"witness_keys": key, "witnesses_required": 2}):
        with pytest.raises(ConfigError):
            IntegrationConfig(tmp_path, **base, **bad).validate()  # type: ignore[arg-type]


async def test_a_failed_switch_to_the_next_signing_key_drops_the_directory_and_does_not_raise() -> None:
    """A directory naming another signing key, and the switch fails (an unreadable key file):
    the refresh logs it and refuses that directory; the background loop is not broken."""
    from safepassage.server.integration.directory import DirectoryKeeper

    org = Org()
    other = replace(
        org.directory(),
        integration=IntegrationService(signing_key("next").verify_key, (org.integration_key.public_key,)),
    )

    def unreadable(_: object) -> bool:
        raise PermissionError("keys/signing.next.key")

    keeper = DirectoryKeeper(Scripted([other]), org.integration_signing.verify_key, 3600, follow_key=unreadable)
    await keeper.refresh()  # no exception
    with pytest.raises(ApiError) as info:
        keeper.current()
    assert info.value.code == "no_directory"
    assert keeper.signing_key == org.integration_signing.verify_key
