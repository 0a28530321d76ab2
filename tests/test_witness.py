"""Independent witnesses cosigning tree heads, end to end against the real intake (protocol 8.8)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from safepassage.client.errors import ServerRefused, UsageError
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import HeadState, fetch_trusted_directory
from safepassage.client.witness import STATE_FILE, cosign, init_witness
from safepassage.crypto import labels as L
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.errors import BelowThreshold, Fork
from safepassage.crypto.threshold import KeySet, Signature
from safepassage.crypto.translog import (
    SignedTreeHead,
    TreeHead,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from safepassage.server.config import ConfigError, ServerConfig
from safepassage.server.context import INTAKE, Intake

from .deployment import Deployment, now_ts
from .helpers import signing_key
from .intake_calls import Calls
from .staff_deployment import public_calls  # noqa: F401


def _allow(dep: Deployment, *keys: object) -> None:
    state: Intake = dep.app[INTAKE]
    state.witness_keys = tuple(keys)  # type: ignore[arg-type]


async def _fetch(dep: Deployment, witnesses: KeySet | None) -> object:
    async with IntakeClient(dep.base_url) as client:
        return await fetch_trusted_directory(
            client, dep.org.admin_set.fingerprint(), None, now_ts(), witnesses=witnesses
        )


async def test_a_pinned_witness_must_have_cosigned(deployment: Deployment, tmp_path: Path) -> None:
    dep = deployment
    key = init_witness(tmp_path / "w")
    pinned = KeySet((key,), 1)
    with pytest.raises(BelowThreshold):
        await _fetch(dep, pinned)
    # The server keeps only cosignatures of witnesses its operator configured.
    with pytest.raises(ServerRefused) as info:
        await cosign(tmp_path / "w", dep.base_url, dep.org.admin_set.fingerprint())
    assert info.value.status == 404
    _allow(dep, key)
    other_front_end = Intake.create(dep.config, dep.keys, dep.store)
    await other_front_end.refresh()
    done = await cosign(tmp_path / "w", dep.base_url, dep.org.admin_set.fingerprint())
    assert done.size == dep.published.log.size
    assert done.cosignatures == 1
    # Another front end on the same database serves the cosignature after its next check.
    await other_front_end.refresh_if_changed()
    assert len(other_front_end.published().head.witness_signatures) == 1
    await _fetch(dep, pinned)  # accepted now
    # Two pinned witnesses, both required: one cosignature is not enough.
    other = signing_key("second-witness").verify_key
    with pytest.raises(BelowThreshold):
        await _fetch(dep, KeySet((key, other), 2))
    # Without pinned witnesses cosignatures are ignored.
    await _fetch(dep, None)


async def test_the_witness_refuses_a_fork_and_signs_nothing(deployment: Deployment, tmp_path: Path) -> None:
    dep = deployment
    folder = tmp_path / "w"
    key = init_witness(folder)
    _allow(dep, key)
    await cosign(folder, dep.base_url, dep.org.admin_set.fingerprint())
    state = HeadState.load(folder / STATE_FILE)
    assert state is not None
    # The witness had seen a different branch of the same size.
    leaves = (*state.leaves[:-1], bytes(32))
    forged = dataclasses.replace(
        state, head=TreeHead(state.head.size, root_hash(leaves), state.head.timestamp), leaves=leaves
    )
    forged.save(folder / STATE_FILE)
    before = dep.app[INTAKE].published().head
    with pytest.raises(Fork):
        await cosign(folder, dep.base_url, dep.org.admin_set.fingerprint())
    await dep.app[INTAKE].refresh()
    assert dep.app[INTAKE].published().head == before


async def test_hostile_cosignatures_are_refused(deployment: Deployment, public_calls: Calls) -> None:  # noqa: F811
    dep = deployment
    witness = signing_key("witness")
    _allow(dep, witness.verify_key)
    head = dep.published.head.head
    good = Signature.make(witness, L.SIG_WITNESS, head.signed_bytes()).to_json()
    stranger = Signature.make(signing_key("stranger"), L.SIG_WITNESS, head.signed_bytes()).to_json()
    admin_purpose = Signature.make(witness, L.SIG_TREE_HEAD, head.signed_bytes()).to_json()
    cases = [
        ({"size": head.size, "signature": stranger}, 422, "unknown_witness"),
        ({"size": head.size, "signature": admin_purpose}, 422, "bad_signature"),
        ({"size": head.size + 5, "signature": good}, 404, "no_such_head"),
        ({"size": 2**40, "signature": good}, 404, "no_such_head"),
        ({"size": 0, "signature": good}, 400, "malformed_request"),
        ({"size": head.size}, 400, "malformed_request"),
        ({"size": head.size, "signature": {"key": "00", "sig": "x"}}, 400, "malformed_signature"),
    ]
    for body, status, code in cases:
        answer = await public_calls.call("POST", "/api/v1/log/cosignatures", json=body)
        assert answer.status == status, body
        assert answer.body["error"]["code"] == code
    answer = await public_calls.call("POST", "/api/v1/log/cosignatures", json={"size": head.size, "signature": good})
    assert answer.status == 200
    assert answer.body == {"size": head.size, "witness_signatures": 1}
    # The same witness again replaces, does not add.
    answer = await public_calls.call("POST", "/api/v1/log/cosignatures", json={"size": head.size, "signature": good})
    assert answer.body["witness_signatures"] == 1


def test_witness_keys_configuration(tmp_path: Path) -> None:
    key = signing_key("w").verify_key
    from safepassage.crypto.encoding import b64e

    ServerConfig(data_dir=tmp_path, witness_keys=b64e(key.public_bytes_raw())).validate()
    for bad in ("nope", b64e(key.public_bytes_raw()) + ",", "a" * 43 + ";" + "b" * 43):
        with pytest.raises(ConfigError):
            ServerConfig(data_dir=tmp_path, witness_keys=bad).validate()


def test_witness_init_refuses_a_used_folder(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "other").write_text("x")
    with pytest.raises(UsageError):
        init_witness(tmp_path / "w")


async def test_auditor_endpoints_prove_every_published_head(deployment: Deployment, public_calls: Calls) -> None:  # noqa: F811
    dep = deployment
    for version in (2, 3, 4):
        await dep.publish(
            dep.org.directory(version, handlers=dep.directory.handlers), timestamp=1_700_000_100 + version
        )
    await dep.app[INTAKE].refresh()
    size = dep.published.log.size
    heads = {}
    for n in range(1, size + 1):
        answer = await public_calls.call("GET", f"/api/v1/log/heads/{n}")
        assert answer.status == 200
        heads[n] = SignedTreeHead.from_json(answer.body)
        heads[n].verify(dep.org.admin_set)
    entries = (await public_calls.call("GET", f"/api/v1/log/entries?start=0&end={size}")).body["entries"]
    for n in range(1, size + 1):
        for i in range(n):
            answer = await public_calls.call("GET", f"/api/v1/log/proof/inclusion?index={i}&size={n}")
            proof = [bytes.fromhex(h) for h in answer.body["proof"]]
            verify_inclusion(leaf_hash(canonical_json(entries[i])), i, n, proof, heads[n].head.root)
        for m in range(1, n + 1):
            answer = await public_calls.call("GET", f"/api/v1/log/proof/consistency?first={m}&second={n}")
            proof = [bytes.fromhex(h) for h in answer.body["proof"]]
            verify_consistency(m, n, heads[m].head.root, heads[n].head.root, proof)
    for path, status in (
        ("/api/v1/log/heads/99", 404),
        ("/api/v1/log/heads/x", 400),
        ("/api/v1/log/proof/inclusion?index=4&size=4", 400),
        ("/api/v1/log/proof/inclusion?index=0&size=99", 404),
        ("/api/v1/log/proof/inclusion?index=-1&size=2", 400),
        ("/api/v1/log/proof/consistency?first=0&second=2", 400),
        ("/api/v1/log/proof/consistency?first=3&second=2", 400),
        ("/api/v1/log/proof/consistency?first=1&second=99", 404),
        ("/api/v1/log/proof/consistency?first=1", 400),
    ):
        assert (await public_calls.call("GET", path)).status == status, path
