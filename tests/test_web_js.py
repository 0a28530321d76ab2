"""The browser's protocol code (server/web/js/src/protocol.js) against tests/vectors and the Python side.

Both directions: node opens what Python sealed (the known-answer envelopes,
replies to a codename) and Python opens, verifies and accepts what node sealed
and signed (a contact with attachments, its submission signature).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.codename import derive_applicant_keys, generate_codename, parse_codename
from safepassage.crypto.encoding import b64d, b64e, canonical_json
from safepassage.crypto.intake import Contact, verify_submission
from safepassage.crypto.keys import VerifyKey

from .helpers import hybrid_key
from .node_js import run

VECTORS = Path(__file__).resolve().parent / "vectors"


@pytest.mark.parametrize("path", sorted((VECTORS / "envelope").glob("*.json")), ids=lambda p: p.stem)
def test_envelope_vectors(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    answer = run(
        {"op": "open", "keys": case["keys"], "envelope": case["envelope"], "purpose": E.Purpose[case["purpose"]].value}
    )
    if case["expect"] == "success":
        assert bytes.fromhex(answer["plaintext"]) == b64d(case["plaintext"])
    else:
        assert "error" in answer
        assert "plaintext" not in answer


def test_codename_vector() -> None:
    case = json.loads((VECTORS / "codename" / "derive.json").read_text(encoding="utf-8"))
    answer = run({"op": "codename", "codename": case["codename"].upper().replace(" ", "  ")})
    assert answer["mailbox_public"] == case["mailbox_public"]
    assert answer["mailbox_id"] == case["mailbox_id"]
    assert answer["reply_key_id"] == case["reply_key_id"]


def test_pow_digest_and_solution() -> None:
    case = json.loads((VECTORS / "pow" / "digest.json").read_text(encoding="utf-8"))
    assert (
        run({"op": "pow_digest", "challenge": case["challenge"], "counter": case["counter"]})["digest"]
        == case["digest"]
    )
    key = W.PowKey.generate()
    challenge = W.issue_challenge(key, difficulty=4, now=1_790_000_000, memlimit_kib=1024)
    counter = run({"op": "pow_solve", "challenge": challenge.to_text()})["counter"]
    W.verify_solution(key, challenge.to_text(), counter, now=1_790_000_001)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 'é\n\t\x01"\\/', "a": [1, -2, 9007199254740991], "c": {"z": True, "x": False, "y": []}},
        {"m": "я служу \u2028\u2029 \x7f 😀 \ufeff", "k": ""},
    ],
)
def test_canonical_json_matches_python(value: dict[str, object]) -> None:
    assert run({"op": "canonical", "value": value})["json"].encode() == canonical_json(value)  # type: ignore[arg-type]


def test_python_opens_and_accepts_what_the_browser_code_seals() -> None:
    handlers = [hybrid_key("js-a"), hybrid_key("js-b")]
    codename = generate_codename().reveal()
    attachment = bytes(range(256)) * 5000  # two chunks
    contact = {
        "pool": "general",
        "language": "ru",
        "message": "canary-js-77: я хочу уехать",
        "fields": {"role": "майор"},
        "attachments": [{"name": "скан.pdf", "mediaType": "application/pdf", "size": len(attachment)}],
    }
    recipients = [b64e(k.public_key.public_bytes_raw()) for k in handlers]
    answer = run({"op": "contact", "codename": codename, "contact": contact, "recipients": recipients})
    data = b64d(answer["envelope"])
    keys = derive_applicant_keys(parse_codename(codename))
    for handler in handlers:
        opened = E.open_envelope(data, [handler], expected_purpose=E.Purpose.CONTACT)
        got = Contact.open_payload(opened.plaintext)
        assert got.message == contact["message"]
        assert got.origin == "browser"
        assert dict(got.fields) == {"role": "майор"}
        assert got.reply_key == keys.reply_key.public_key
        assert got.mailbox_key == keys.mailbox_key.verify_key
        assert [(a.name, a.size, a.chunks) for a in got.attachments] == [("скан.pdf", len(attachment), 2)]
    verify_submission(
        VerifyKey(b64d(answer["mailbox_key"])),
        b64d(answer["signature"]),
        kind="contact",
        pool="general",
        attachments=1,
        envelope=data,
    )

    sealed = run(
        {
            "op": "seal",
            "plaintext": b"x".hex(),
            "recipients": recipients,
            "purpose": 1,
            "attachments": [attachment.hex()],
        }
    )
    opened = E.open_envelope(b64d(sealed["envelope"]), [handlers[1]], expected_purpose=E.Purpose.CONTACT)
    opener = opened.attachment_opener(0)
    assert b"".join(opener.open_chunk(b64d(f)) for f in sealed["chunks"][0]) == attachment
    opener.finish()


def test_browser_code_opens_what_python_seals_to_a_codename() -> None:
    codename = generate_codename()
    keys = derive_applicant_keys(codename)
    envelope = E.seal("ответ: четверг".encode(), [keys.reply_key.public_key], E.Purpose.REPLY)
    answer = run({"op": "open_codename", "codename": codename.reveal(), "envelope": b64e(envelope.data), "purpose": 2})
    assert bytes.fromhex(answer["plaintext"]).decode() == "ответ: четверг"
