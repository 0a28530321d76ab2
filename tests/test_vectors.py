"""Every known-answer vector under tests/vectors/ gives its expected outcome (section 13)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safepassage.crypto import envelope as E
from safepassage.crypto import errors
from safepassage.crypto import pow as W
from safepassage.crypto import translog as T
from safepassage.crypto import vault as V
from safepassage.crypto.audit import AuditEntry
from safepassage.crypto.codename import derive_applicant_keys, parse_codename
from safepassage.crypto.directory import SignedDirectory, verify_chain
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.keys import HybridPrivateKey, SigningKey, VerifyKey
from safepassage.crypto.receipt import Receipt

from .vectors import generate

ROOT = Path(__file__).resolve().parent / "vectors"
FILES = sorted(p for p in ROOT.rglob("*.json"))


def _keys(case: dict[str, Any]) -> list[HybridPrivateKey]:
    return [HybridPrivateKey.from_private_bytes(bytes.fromhex(k)) for k in case["keys"]]


def _keys_case(case: dict[str, Any]) -> None:
    if "seed" in case:
        vk = SigningKey.from_seed_bytes(bytes.fromhex(case["seed"])).verify_key
        assert b64e(vk.public_bytes_raw()) == case["public"]
        key_id, fingerprint = vk.key_id, vk.fingerprint()
    else:
        pk = HybridPrivateKey.from_private_bytes(bytes.fromhex(case["private"])).public_key
        assert b64e(pk.public_bytes_raw()) == case["public"]
        key_id, fingerprint = pk.key_id, pk.fingerprint()
    assert key_id.hex() == case["key_id"]
    assert fingerprint == case["fingerprint"]


def _codename_case(case: dict[str, Any]) -> None:
    keys = derive_applicant_keys(parse_codename(case["codename"]))
    assert b64e(keys.mailbox_key.verify_key.public_bytes_raw()) == case["mailbox_public"]
    assert keys.mailbox_id.hex() == case["mailbox_id"]
    assert keys.reply_key.key_id.hex() == case["reply_key_id"]


def _envelope_case(case: dict[str, Any]) -> None:
    opened = E.open_envelope(b64d(case["envelope"]), _keys(case), expected_purpose=E.Purpose[case["purpose"]])
    assert opened.plaintext == b64d(case["plaintext"])


def _chunks_case(case: dict[str, Any]) -> None:
    opened = E.open_envelope(b64d(case["envelope"]), _keys(case), expected_purpose=E.Purpose.CONTACT)
    opener = opened.attachment_opener(case["attachment"])
    data = b"".join(opener.open_chunk((ROOT / "chunks" / name).read_bytes()) for name in case["chunks"])
    opener.finish()
    assert hashlib.sha256(data).hexdigest() == case["sha256"]


def _directory_case(case: dict[str, Any]) -> None:
    chain = [SignedDirectory.from_bytes(b64d(c)) for c in case["chain"]]
    last = verify_chain(case["pinned"], chain)
    assert last == chain[-1].directory


def _receipt_case(case: dict[str, Any]) -> None:
    receipt = Receipt.from_bytes(b64d(case["receipt"]))
    receipt.verify(VerifyKey(b64d(case["key"])), envelope_hash=b64d(case["envelope_hash"]))


def _translog_case(case: dict[str, Any]) -> None:
    if "roots" in case:
        leaves = [T.leaf_hash(bytes.fromhex(e)) for e in case["entries"]]
        assert [T.root_hash(leaves[:n]).hex() for n in range(len(leaves) + 1)] == case["roots"]
        return
    proof = [bytes.fromhex(p) for p in case["proof"]]
    if "index" in case:
        leaf = T.leaf_hash(bytes.fromhex(case["leaf"]))
        T.verify_inclusion(leaf, case["index"], case["size"], proof, bytes.fromhex(case["root"]))
    else:
        T.verify_consistency(
            case["old_size"], case["new_size"], bytes.fromhex(case["old_root"]), bytes.fromhex(case["new_root"]), proof
        )


def _vault_case(case: dict[str, Any], tmp: Path) -> None:
    path = tmp / "vault"
    path.write_bytes(b64d(case["vault"]))
    path.chmod(0o600)
    contents = V.open_vault(path, V.Passphrase(case["passphrase"]))
    assert {name: b64e(contents.get(name)) for name in contents.names()} == case["entries"]


def _pow_case(case: dict[str, Any]) -> None:
    key = W.PowKey.from_bytes(bytes.fromhex(case["key"]))
    if "digest" in case:
        challenge = W.Challenge.from_text(case["challenge"])
        assert key._mac(challenge.mac_input()) == challenge.mac
        digest = W._work_hash(
            challenge.to_bytes(), case["counter"], memlimit_kib=challenge.memlimit_kib, opslimit=challenge.opslimit
        )
        assert digest.hex() == case["digest"]
        return
    W.verify_solution(key, case["challenge"], case["counter"], now=case["now"])


def _audit_case(case: dict[str, Any]) -> None:
    entry = AuditEntry.from_json(case["entry"])
    assert b64e(entry.body.signed_bytes()) == case["signed"]
    assert entry.body.entry_hash().hex() == case["body_hash"]
    entry.verify(VerifyKey(b64d(case["key"])))
    assert entry.hash_matches()


RUNNERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "keys": _keys_case,
    "codename": _codename_case,
    "envelope": _envelope_case,
    "chunks": _chunks_case,
    "directory": _directory_case,
    "receipt": _receipt_case,
    "translog": _translog_case,
    "pow": _pow_case,
    "audit": _audit_case,
}


def test_generator_and_files_agree() -> None:
    names = set(generate.CASES) | set(generate.CHUNK_CASES)
    assert {str(p.relative_to(ROOT).with_suffix("")) for p in FILES} == names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_vector(path: Path, tmp_path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    kind = case["case"].split("/")[0]
    run = RUNNERS[kind] if kind != "vault" else lambda c: _vault_case(c, tmp_path)
    if case["expect"] == "success":
        run(case)
        return
    expected = getattr(errors, case["expect"])
    assert issubclass(expected, errors.SafePassageError)
    with pytest.raises(expected):
        run(case)
