"""Write the known-answer vectors under tests/vectors/ (docs/protocol.md, section 13).

Run with ``make vectors``. One case per file, each with an ``expect`` member:
``"success"`` or the name of the error class the case must raise. Key material
comes from fixed seeds, so derived values (key ids, fingerprints, codename keys,
Merkle roots) are exact known answers; envelopes and chunks are randomised by
design, so their vectors are fixed ciphertexts that must open (or fail) with the
fixed keys. Never edit the output by hand: change this file and regenerate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safepassage.crypto import envelope as E
from safepassage.crypto import labels as L
from safepassage.crypto import pow as W
from safepassage.crypto import translog as T
from safepassage.crypto import vault as V
from safepassage.crypto.audit import AuditBody, AuditEntry
from safepassage.crypto.codename import derive_applicant_keys, parse_codename
from safepassage.crypto.encoding import b64e
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.threshold import KeySet

from ..helpers import Org, hybrid_key, seed, signing_key

ROOT = Path(__file__).resolve().parent
Case = dict[str, Any]
CASES: dict[str, Callable[[], Case]] = {}


def case(name: str) -> Callable[[Callable[[], Case]], Callable[[], Case]]:
    def register(fn: Callable[[], Case]) -> Callable[[], Case]:
        CASES[name] = fn
        return fn

    return register


# --- keys -------------------------------------------------------------------------


@case("keys/ed25519")
def _ed25519() -> Case:
    key = signing_key("vector-ed25519")
    return {
        "seed": seed("vector-ed25519").hex(),
        "public": b64e(key.verify_key.public_bytes_raw()),
        "key_id": key.verify_key.key_id.hex(),
        "fingerprint": key.verify_key.fingerprint(),
        "expect": "success",
    }


@case("keys/hybrid")
def _hybrid() -> Case:
    key = hybrid_key("vector-hybrid")
    return {
        "private": seed("vector-hybrid", 96).hex(),
        "public": b64e(key.public_key.public_bytes_raw()),
        "key_id": key.key_id.hex(),
        "fingerprint": key.public_key.fingerprint(),
        "expect": "success",
    }


# --- codenames ----------------------------------------------------------------------

CODENAME = "abacus dove mango upswing twins dreamland velvet"


@case("codename/derive")
def _codename() -> Case:
    keys = derive_applicant_keys(parse_codename(CODENAME))
    return {
        "codename": CODENAME,
        "mailbox_public": b64e(keys.mailbox_key.verify_key.public_bytes_raw()),
        "mailbox_id": keys.mailbox_id.hex(),
        "reply_key_id": keys.reply_key.key_id.hex(),
        "expect": "success",
    }


@case("codename/unknown-word")
def _codename_bad() -> Case:
    return {"codename": "abacus dove mango upswing twins dreamland qwertyx", "expect": "InvalidCodename"}


# --- envelopes ----------------------------------------------------------------------

RECIPIENTS = [hybrid_key(f"vector-recipient-{i}") for i in range(5)]
MESSAGE = "Я работаю в министерстве. I can offer documents.".encode()


def _envelope_case(
    data: bytes, keys: list[int], expect: str, plaintext: bytes | None = None, purpose: str = "CONTACT"
) -> Case:
    out: Case = {
        "keys": [seed(f"vector-recipient-{i}", 96).hex() for i in keys],
        "envelope": b64e(data),
        "purpose": purpose,
        "expect": expect,
    }
    if plaintext is not None:
        out["plaintext"] = b64e(plaintext)
    return out


def _sealed(n: int = 1) -> E.SealedEnvelope:
    return E.seal(MESSAGE, [k.public_key for k in RECIPIENTS[:n]], E.Purpose.CONTACT)


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


@case("envelope/one-recipient")
def _env_one() -> Case:
    return _envelope_case(_sealed(1).data, [0], "success", MESSAGE)


@case("envelope/five-recipients")
def _env_five() -> Case:
    return _envelope_case(_sealed(5).data, [3], "success", MESSAGE)


@case("envelope/empty-message-largest-bucket")
def _env_empty() -> Case:
    sealed = E.seal(b"", [RECIPIENTS[0].public_key], E.Purpose.REPLY, min_bucket=len(E.BUCKETS) - 1)
    return _envelope_case(sealed.data, [0], "success", b"", purpose="REPLY")


@case("envelope/not-a-recipient")
def _env_wrong() -> Case:
    return _envelope_case(_sealed(2).data, [4], "NotARecipient")


@case("envelope/purpose-changed")
def _env_purpose() -> Case:
    data = _sealed(1).data
    # Opened as the reply it now claims to be: the body tag binds the purpose.
    return _envelope_case(data[:4] + b"\x02" + data[5:], [0], "DecryptionFailed", purpose="REPLY")


@case("envelope/envelope-id-changed")
def _env_id() -> Case:
    return _envelope_case(_flip(_sealed(1).data, 10), [0], "DecryptionFailed")


@case("envelope/mlkem-ciphertext-changed")
def _env_mlkem() -> Case:
    return _envelope_case(_flip(_sealed(1).data, E.HEADER_PREFIX_LEN + 64 + 500), [0], "DecryptionFailed")


@case("envelope/x25519-ephemeral-changed")
def _env_x25519() -> Case:
    return _envelope_case(_flip(_sealed(1).data, E.HEADER_PREFIX_LEN + 40), [0], "DecryptionFailed")


@case("envelope/wrapped-key-changed")
def _env_wrapped() -> Case:
    return _envelope_case(_flip(_sealed(1).data, E.HEADER_PREFIX_LEN + E.STANZA_LEN - 1), [0], "DecryptionFailed")


@case("envelope/other-stanza-changed")
def _env_other_stanza() -> Case:
    # Recipient 0 cannot open an envelope whose *other* stanza was altered: the
    # body binds the whole header.
    sealed = _sealed(2)
    mine = sealed.header.recipients.index(RECIPIENTS[0].key_id)
    other_start = E.HEADER_PREFIX_LEN + E.STANZA_LEN * (1 - mine)
    return _envelope_case(_flip(sealed.data, other_start + 100), [0], "DecryptionFailed")


@case("envelope/commitment-changed")
def _env_commitment() -> Case:
    data = _sealed(1).data
    return _envelope_case(_flip(data, E.HEADER_PREFIX_LEN + E.STANZA_LEN + 3), [0], "DecryptionFailed")


@case("envelope/wrong-purpose-expected")
def _env_expected() -> Case:
    return _envelope_case(_sealed(1).data, [0], "MalformedInput", purpose="FOLLOW_UP")


@case("envelope/body-changed")
def _env_body() -> Case:
    data = _sealed(1).data
    return _envelope_case(_flip(data, len(data) - 100), [0], "DecryptionFailed")


@case("envelope/truncated")
def _env_truncated() -> Case:
    return _envelope_case(_sealed(1).data[:-1], [0], "MalformedInput")


@case("envelope/trailing-byte")
def _env_trailing() -> Case:
    return _envelope_case(_sealed(1).data + b"\x00", [0], "MalformedInput")


@case("envelope/future-version")
def _env_version() -> Case:
    data = _sealed(1).data
    return _envelope_case(data[:3] + b"\x02" + data[4:], [0], "UnsupportedVersion")


@case("envelope/stanzas-unsorted")
def _env_unsorted() -> Case:
    data = _sealed(2).data
    p, s = E.HEADER_PREFIX_LEN, E.STANZA_LEN
    swapped = data[:p] + data[p + s : p + 2 * s] + data[p : p + s] + data[p + 2 * s :]
    return _envelope_case(swapped, [0], "MalformedInput")


@case("envelope/bucket-mismatch")
def _env_bucket() -> Case:
    data = _sealed(1).data
    return _envelope_case(data[:5] + b"\x01" + data[6:], [0], "MalformedInput")


# --- chunks -------------------------------------------------------------------------

ATTACHMENT = bytes((i * 31 + 7) & 0xFF for i in range(E.CHUNK_DATA_MAX + 1000))


def _chunk_set() -> tuple[bytes, list[bytes], bytes, list[bytes]]:
    a = _sealed(1)
    b = _sealed(1)
    frames_a = list(a.attachment_sealer(0).seal_stream(io.BytesIO(ATTACHMENT)))
    frames_b = list(b.attachment_sealer(0).seal_stream(io.BytesIO(ATTACHMENT)))
    return a.data, frames_a, b.data, frames_b


def _write_chunk_files() -> Case:
    env_a, frames_a, env_b, frames_b = _chunk_set()
    data_dir = ROOT / "chunks" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("a0", frames_a[0]), ("a1", frames_a[1]), ("b0", frames_b[0])):
        (data_dir / f"{name}.bin").write_bytes(frame)
    return {"envelope_a": b64e(env_a), "envelope_b": b64e(env_b)}


def _chunk_case(envelopes: Case, envelope: str, frames: list[str], expect: str) -> Case:
    out: Case = {
        "keys": [seed("vector-recipient-0", 96).hex()],
        "envelope": envelopes[envelope],
        "attachment": 0,
        "chunks": [f"data/{f}.bin" for f in frames],
        "expect": expect,
    }
    if expect == "success":
        out["sha256"] = hashlib.sha256(ATTACHMENT).hexdigest()
    return out


CHUNK_CASES = {
    "chunks/in-order": ("envelope_a", ["a0", "a1"], "success"),
    "chunks/reordered": ("envelope_a", ["a1", "a0"], "DecryptionFailed"),
    "chunks/truncated": ("envelope_a", ["a0"], "DecryptionFailed"),
    "chunks/repeated": ("envelope_a", ["a0", "a0", "a1"], "DecryptionFailed"),
    "chunks/spliced-from-other-envelope": ("envelope_a", ["b0", "a1"], "DecryptionFailed"),
    "chunks/under-other-envelope": ("envelope_b", ["a0", "a1"], "DecryptionFailed"),
}


# --- directories --------------------------------------------------------------------

ORG = Org(
    admins=[signing_key(f"vector-admin-{i}") for i in range(3)],
    handler_ids=("anna", "boris"),
)


def _dir_case(chain: list[bytes], expect: str, pinned: str | None = None) -> Case:
    return {
        "pinned": pinned or ORG.admin_set.fingerprint(),
        "chain": [b64e(c) for c in chain],
        "expect": expect,
    }


def _dir(version: int, **changes: Any) -> Any:
    return ORG.directory(version, **changes)


@case("directory/genesis-2-of-3")
def _d_genesis() -> Case:
    return _dir_case([ORG.signed(_dir(1)).to_bytes()], "success")


@case("directory/genesis-1-of-3")
def _d_one() -> Case:
    return _dir_case([ORG.signed(_dir(1), ORG.admins[:1]).to_bytes()], "BelowThreshold")


@case("directory/other-organisation")
def _d_other() -> Case:
    rogue = Org(admins=[signing_key(f"vector-rogue-{i}") for i in range(3)], handler_ids=("anna",))
    return _dir_case([rogue.signed(rogue.directory(1, handlers=(rogue.handler("anna"),))).to_bytes()], "UntrustedRoot")


@case("directory/successor")
def _d_successor() -> Case:
    return _dir_case([ORG.signed(_dir(1)).to_bytes(), ORG.signed(_dir(2), ORG.admins[1:]).to_bytes()], "success")


@case("directory/rollback")
def _d_rollback() -> Case:
    return _dir_case([ORG.signed(_dir(2)).to_bytes(), ORG.signed(_dir(1)).to_bytes()], "Rollback")


@case("directory/rogue-admin-alone")
def _d_rogue() -> Case:
    mallory = Org(handler_ids=("mallory",))
    d2 = _dir(2, handlers=(*_dir(1).handlers, mallory.handler("mallory")))
    return _dir_case([ORG.signed(_dir(1)).to_bytes(), ORG.signed(d2, ORG.admins[2:]).to_bytes()], "BelowThreshold")


@case("directory/admin-rotation")
def _d_rotation() -> Case:
    new = signing_key("vector-admin-new")
    new_set = KeySet((ORG.admins[0].verify_key, ORG.admins[1].verify_key, new.verify_key), 2)
    chain = [
        ORG.signed(_dir(1)).to_bytes(),
        ORG.signed(_dir(2, admins=new_set), ORG.admins[:2]).to_bytes(),
        ORG.signed(_dir(3, admins=new_set), [ORG.admins[1], new]).to_bytes(),
    ]
    return _dir_case(chain, "success")


@case("directory/removed-admin-signs")
def _d_removed() -> Case:
    new = signing_key("vector-admin-new")
    new_set = KeySet((ORG.admins[0].verify_key, ORG.admins[1].verify_key, new.verify_key), 2)
    chain = [
        ORG.signed(_dir(1)).to_bytes(),
        ORG.signed(_dir(2, admins=new_set), ORG.admins[:2]).to_bytes(),
        ORG.signed(_dir(3, admins=new_set), [ORG.admins[0], ORG.admins[2]]).to_bytes(),
    ]
    return _dir_case(chain, "BelowThreshold")


@case("directory/altered-after-signing")
def _d_altered() -> Case:
    signed = ORG.signed(_dir(1)).to_bytes()
    return _dir_case(
        [signed.replace(b"Safe Passage test organisation", b"Safe Passage test organisatioN")], "BelowThreshold"
    )


@case("directory/not-canonical")
def _d_noncanonical() -> Case:
    signed = ORG.signed(_dir(1)).to_bytes()
    return _dir_case([signed.replace(b'"version":1', b'"version":01')], "MalformedInput")


# --- receipts -------------------------------------------------------------------------

RECEIPT_HASH = bytes(range(32))


@case("receipt/valid")
def _r_valid() -> Case:
    r = Receipt.issue(ORG.receipt, "c_vector0001", RECEIPT_HASH, "2026-11-28")
    return {
        "receipt": b64e(r.to_bytes()),
        "key": b64e(ORG.receipt.verify_key.public_bytes_raw()),
        "envelope_hash": b64e(RECEIPT_HASH),
        "expect": "success",
    }


@case("receipt/other-key")
def _r_other() -> Case:
    r = Receipt.issue(signing_key("vector-not-the-server"), "c_vector0001", RECEIPT_HASH, "2026-11-28")
    return {
        "receipt": b64e(r.to_bytes()),
        "key": b64e(ORG.receipt.verify_key.public_bytes_raw()),
        "envelope_hash": b64e(RECEIPT_HASH),
        "expect": "BadSignature",
    }


# --- audit log (section 20) -------------------------------------------------------------


def _audit_entry(key: SigningKey, *, detail: str = "alice as handler", seq: int = 2) -> AuditEntry:
    body = AuditBody(
        seq=seq,
        prev=bytes(range(32, 64)),
        day="2026-11-28",
        actor="root",
        action="invite",
        case="",
        detail=detail,
        key_id=key.verify_key.key_id,
    )
    return AuditEntry.make(key, body)


def _audit_case(entry: AuditEntry, expect: str) -> Case:
    return {
        "entry": entry.to_json(),
        "key": b64e(ORG.receipt.verify_key.public_bytes_raw()),
        "signed": b64e(entry.body.signed_bytes()),
        "body_hash": entry.body.entry_hash().hex(),
        "expect": expect,
    }


@case("audit/valid")
def _a_valid() -> Case:
    return _audit_case(_audit_entry(ORG.receipt), "success")


@case("audit/edited")
def _a_edited() -> Case:
    good = _audit_entry(ORG.receipt)
    edited = AuditEntry(dataclasses.replace(good.body, detail="mallory as admin"), good.hash, good.signature)
    return _audit_case(edited, "BadSignature")


@case("audit/other-key")
def _a_other() -> Case:
    forged = _audit_entry(signing_key("vector-not-the-server"))
    # The forger names the server's key id but cannot make its signature.
    body = dataclasses.replace(forged.body, key_id=ORG.receipt.verify_key.key_id)
    return _audit_case(
        AuditEntry(
            body, body.entry_hash(), signing_key("vector-not-the-server").sign(L.SIG_AUDIT, body.signed_bytes())
        ),
        "BadSignature",
    )


@case("audit/receipt-purpose")
def _a_receipt_purpose() -> Case:
    good = _audit_entry(ORG.receipt)
    # The right key and bytes, but signed as a receipt: purposes never cross.
    sig = ORG.receipt.sign(L.SIG_RECEIPT, good.body.signed_bytes())
    return _audit_case(AuditEntry(good.body, good.hash, sig), "BadSignature")


@case("audit/uppercase-key-id")
def _a_uppercase() -> Case:
    out = _audit_case(_audit_entry(ORG.receipt), "MalformedInput")
    out["entry"]["key"] = out["entry"]["key"].upper()
    return out


# --- vault ---------------------------------------------------------------------------

VAULT_PASSPHRASE = "correct horse battery staple, in Cyrillic: конь"
VAULT_ENTRIES = {"identity": seed("vector-vault-identity"), "intake-0": seed("vector-vault-intake", 96)}


def _vault_file() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vault"
        V.create_vault(
            path,
            V.Passphrase(VAULT_PASSPHRASE),
            V.VaultContents(VAULT_ENTRIES),
            opslimit=V.MIN_OPSLIMIT,
            memlimit=V.MIN_MEMLIMIT,
        )
        return path.read_bytes()


@case("vault/opens")
def _v_opens() -> Case:
    entries = {k: b64e(v) for k, v in VAULT_ENTRIES.items()}
    return {"vault": b64e(_vault_file()), "passphrase": VAULT_PASSPHRASE, "entries": entries, "expect": "success"}


@case("vault/wrong-passphrase")
def _v_wrong() -> Case:
    return {"vault": b64e(_vault_file()), "passphrase": VAULT_PASSPHRASE + ".", "expect": "WrongPassphrase"}


@case("vault/payload-changed")
def _v_changed() -> Case:
    data = _vault_file()
    return {"vault": b64e(_flip(data, len(data) - 20)), "passphrase": VAULT_PASSPHRASE, "expect": "WrongPassphrase"}


@case("vault/cost-lowered")
def _v_cost() -> Case:
    # Lowering the stored Argon2id cost below the floor is refused before any work.
    data = _vault_file()
    return {
        "vault": b64e(data[:4] + (1).to_bytes(4, "big") + data[8:]),
        "passphrase": VAULT_PASSPHRASE,
        "expect": "MalformedInput",
    }


# --- proof of work -----------------------------------------------------------------------

POW_KEY = W.PowKey.from_bytes(seed("vector-pow-key"))
POW_NOW = 1_790_000_000


def _pow_parts() -> tuple[W.Challenge, int, int]:
    challenge = W.issue_challenge(POW_KEY, difficulty=6, now=POW_NOW, lifetime=600, memlimit_kib=1024)
    good = W.solve(challenge)
    bad = next(c for c in range(good + 1, good + 10_000) if not _meets(challenge, c))
    return challenge, good, bad


def _meets(challenge: W.Challenge, counter: int) -> bool:
    try:
        W.verify_solution(POW_KEY, challenge.to_text(), counter, now=POW_NOW)
    except W.PowRejected:
        return False
    return True


def _pow_case(challenge: W.Challenge, counter: int, now: int, expect: str, key: bytes | None = None) -> Case:
    return {
        "key": (key or seed("vector-pow-key")).hex(),
        "challenge": challenge.to_text(),
        "counter": counter,
        "now": now,
        "expect": expect,
    }


@case("pow/digest")
def _w_digest() -> Case:
    # A fixed challenge (fixed nonce and expiry) pins the whole Argon2id work hash.
    fields = (bytes(range(16)), POW_NOW + 600, 4, 1024, 1)
    mac = POW_KEY._mac(W._mac_input(*fields))
    challenge = W.Challenge(*fields, mac)
    return {
        "key": seed("vector-pow-key").hex(),
        "challenge": challenge.to_text(),
        "counter": 12345,
        "digest": W._work_hash(challenge.to_bytes(), 12345, memlimit_kib=1024, opslimit=1).hex(),
        "expect": "success",
    }


@case("pow/valid")
def _w_valid() -> Case:
    challenge, good, _ = _pow_parts()
    return _pow_case(challenge, good, POW_NOW, "success")


@case("pow/insufficient-work")
def _w_bad() -> Case:
    challenge, _, bad = _pow_parts()
    return _pow_case(challenge, bad, POW_NOW, "PowRejected")


@case("pow/expired")
def _w_expired() -> Case:
    challenge, good, _ = _pow_parts()
    return _pow_case(challenge, good, challenge.expires, "PowRejected")


@case("pow/other-server-key")
def _w_other() -> Case:
    challenge, good, _ = _pow_parts()
    return _pow_case(challenge, good, POW_NOW, "PowRejected", key=seed("vector-other-pow-key"))


# --- transparency log -------------------------------------------------------------------


def _rfc6962_leaves() -> list[bytes]:
    hexes = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
    return [bytes.fromhex(h) for h in hexes]


@case("translog/roots")
def _t_roots() -> Case:
    leaves = [T.leaf_hash(x) for x in _rfc6962_leaves()]
    return {
        "entries": [x.hex() for x in _rfc6962_leaves()],
        "roots": [T.root_hash(leaves[:n]).hex() for n in range(len(leaves) + 1)],
        "expect": "success",
    }


def _proof_case(kind: str, good: bool, tamper: int | None = None) -> Case:
    entries = _rfc6962_leaves()
    leaves = [T.leaf_hash(x) for x in entries]
    if kind == "inclusion":
        proof = T.inclusion_proof(leaves, 5)
        out: Case = {"index": 5, "size": 8, "leaf": entries[5].hex(), "root": T.root_hash(leaves).hex()}
    else:
        proof = T.consistency_proof(leaves, 3)
        out = {
            "old_size": 3,
            "new_size": 8,
            "old_root": T.root_hash(leaves[:3]).hex(),
            "new_root": T.root_hash(leaves).hex(),
        }
    if tamper is not None:
        proof[tamper] = _flip(proof[tamper], 0)
    out["proof"] = [p.hex() for p in proof]
    out["expect"] = "success" if good else "InvalidProof"
    return out


CASES["translog/inclusion"] = lambda: _proof_case("inclusion", True)
CASES["translog/inclusion-tampered"] = lambda: _proof_case("inclusion", False, 1)
CASES["translog/consistency"] = lambda: _proof_case("consistency", True)
CASES["translog/consistency-tampered"] = lambda: _proof_case("consistency", False, 0)


def main() -> None:
    for sub in ("keys", "codename", "envelope", "chunks", "directory", "receipt", "translog", "vault", "pow", "audit"):
        shutil.rmtree(ROOT / sub, ignore_errors=True)
    envelopes = _write_chunk_files()
    for name, (env, frames, expect) in CHUNK_CASES.items():
        CASES[name] = lambda env=env, frames=frames, expect=expect: _chunk_case(envelopes, env, frames, expect)
    for name, build in sorted(CASES.items()):
        path = ROOT / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"case": name, **build()}
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(CASES)} cases under {ROOT}")


if __name__ == "__main__":
    main()
