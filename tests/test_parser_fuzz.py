"""Property-based fuzzing of every parser that reads what an adversary can write: only our errors come out.

A seized or hostile server writes the answers the clients parse; an applicant
or a planted agent writes what the server and the handlers parse. For each
parser this feeds (a) arbitrary input and (b) a valid document with one part
changed (a member replaced by any JSON value, removed, or added), and accepts
exactly two outcomes: a value, or a :class:`SafePassageError` subclass (whose
docstring is the user's message). Anything else (KeyError, TypeError,
ValueError, RecursionError, UnicodeError, ...) is a bug: it would surface as a
traceback or an opaque 500.

Parsers fuzzed elsewhere: envelope header and chunk frame (test_envelope.py),
signed directory bytes (test_directory.py), tree heads (test_translog.py),
vault files (test_vault.py), PoW challenge text (test_pow.py), TOTP codes
(test_staff_totp.py), attachment names (test_handler_flows.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.client import staff_api, wire
from safepassage.client.errors import ProtocolViolation
from safepassage.client.handler_vault import HeldIntakeKey
from safepassage.client.intake_api import SocksProxy
from safepassage.client.integration_api import package_answer
from safepassage.client.trust import HeadState
from safepassage.crypto import pow as W
from safepassage.crypto.codename import parse_codename
from safepassage.crypto.directory import Directory, Handler, IntakeKey, IntegrationService, Pool, SignedDirectory
from safepassage.crypto.encoding import b64e, canonical_json, parse_canonical_json
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.intake import AttachmentInfo, FollowUp
from safepassage.crypto.intake import Contact as ContactPayload
from safepassage.crypto.keys import KeyId
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.staffmsg import Escalation, IntegrationReceipt, Reply
from safepassage.crypto.threshold import Signature
from safepassage.crypto.translog import MerkleLog
from safepassage.server.directory_store import parse_signed_head

from .helpers import Org
from .intake_calls import Applicant

ORG = Org()
DIRECTORY = ORG.directory()
SIGNED = ORG.signed(DIRECTORY)
_, HEAD = ORG.publication(DIRECTORY, MerkleLog())
APPLICANT = Applicant()
ID = "c_abcdefgh1234"
DAY = "2026-01-02"
RECEIPT = Receipt.issue(ORG.receipt, ID, b"\x11" * 32, DAY)


def _receipt_json() -> dict[str, Any]:
    return {"contact": ID, "day": DAY, "envelope": b64e(RECEIPT.envelope_hash), "sig": b64e(RECEIPT.signature)}


CASE = {
    "id": ID,
    "pool": "general",
    "day": DAY,
    "bucket": 0,
    "status": "new",
    "attachments": 1,
    "server_sealed": False,
    "mailbox": "ab" * 32,
    "follow_ups": 0,
}

# --- strategies -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


@st.composite
def mutated(draw: st.DrawFn, template: Any, *, root_object: bool = False) -> Any:
    """``template`` with one place changed: replaced by any JSON value, removed, or given an extra member.

    With ``root_object`` the document stays an object (the parser's contract:
    ``wire.parse_json`` has already refused any other answer).
    """
    doc = _copy(template)
    path = draw(st.sampled_from(_paths(doc)))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if not path:
        if action == "replace":
            return draw(json_objects if root_object else json_values)
        if action == "add":
            doc[draw(st.text(max_size=8))] = draw(json_values)
        return doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = draw(json_values)
    elif action == "remove":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=8))] = draw(json_values)
    elif isinstance(parent[last], list):
        parent[last].append(draw(json_values))
    else:
        parent[last] = [parent[last]]
    return doc


def only_our_errors(parse: Callable[[Any], object], value: Any) -> None:
    with contextlib.suppress(SafePassageError):
        parse(value)


# --- JSON documents: crypto objects ----------------------------------------------------------------

JSON_PARSERS: dict[str, tuple[Callable[[Any], object], Any]] = {
    "directory": (Directory.from_json, DIRECTORY.to_json()),
    "signed directory": (lambda v: SignedDirectory.from_bytes(canonical_json(v)), SIGNED.to_json()),
    "pool": (Pool.from_json, DIRECTORY.pools[0].to_json()),
    "handler": (Handler.from_json, DIRECTORY.handlers[0].to_json()),
    "intake key": (IntakeKey.from_json, DIRECTORY.handlers[0].intake_keys[0].to_json()),
    "integration service": (IntegrationService.from_json, DIRECTORY.integration.to_json()),
    "admin signature": (Signature.from_json, SIGNED.signatures[0].to_json()),
    "signed tree head": (lambda v: parse_signed_head(canonical_json(v)), HEAD.to_json()),
    "receipt": (lambda v: Receipt.from_bytes(canonical_json(v)), json.loads(RECEIPT.to_bytes())),
    "attachment info": (AttachmentInfo.from_json, AttachmentInfo("a.pdf", "application/pdf", 10, 1).to_json()),
    "integration receipt": (
        IntegrationReceipt.from_json,
        {"package": ID, "day": DAY, "envelope": b64e(b"\x22" * 32), "sig": b64e(b"\x33" * 64)},
    ),
}


@pytest.mark.parametrize("name", sorted(JSON_PARSERS))
@given(data=st.data())
def test_crypto_json_parsers_raise_only_our_errors(name: str, data: st.DataObject) -> None:
    parse, template = JSON_PARSERS[name]
    parse(_copy(template))  # the template itself is valid
    only_our_errors(parse, data.draw(mutated(template)))
    only_our_errors(parse, data.draw(json_values))


# --- sealed payloads (what a handler's client opens) -----------------------------------------------

CONTACT_PAYLOAD = APPLICANT.contact()


def _payload_parsers() -> dict[str, Callable[[bytes], object]]:
    return {
        "contact": ContactPayload.open_payload,
        "follow-up": FollowUp.open_payload,
        "reply": lambda b: Reply.open_payload(b, DIRECTORY),
        "escalation": lambda b: Escalation.open_payload(b, DIRECTORY),
        "held intake key": HeldIntakeKey.from_bytes,
        "head state": HeadState.from_bytes,
        "canonical json": lambda b: parse_canonical_json(b, max_len=4096),
        "answer json": wire.parse_json,
        "pow challenge bytes": W.Challenge.from_bytes,
    }


@pytest.mark.parametrize("name", sorted(_payload_parsers()))
@given(blob=st.binary(max_size=600))
def test_byte_parsers_raise_only_our_errors(name: str, blob: bytes) -> None:
    only_our_errors(_payload_parsers()[name], blob)


@given(data=st.data())
def test_contact_payload_with_one_change_raises_only_our_errors(data: st.DataObject) -> None:
    assert ContactPayload.open_payload(CONTACT_PAYLOAD).message
    position = data.draw(st.integers(min_value=0, max_value=len(CONTACT_PAYLOAD) - 1))
    changed = bytearray(CONTACT_PAYLOAD)
    changed[position] = data.draw(st.integers(min_value=0, max_value=255))
    only_our_errors(ContactPayload.open_payload, bytes(changed))


# --- text ------------------------------------------------------------------------------------------

TEXT_PARSERS: dict[str, Callable[[str], object]] = {
    "codename": parse_codename,
    "key id": KeyId.from_hex,
    "socks proxy": SocksProxy.parse,
    "pow challenge text": W.Challenge.from_text,
}


@pytest.mark.parametrize("name", sorted(TEXT_PARSERS))
@given(text=st.text(max_size=200))
def test_text_parsers_raise_only_our_errors(name: str, text: str) -> None:
    only_our_errors(TEXT_PARSERS[name], text)


POW_KEY = W.PowKey.generate()


@given(text=st.text(max_size=300), counter=st.integers(min_value=-(2**80), max_value=2**80))
def test_pow_solution_check_raises_only_our_errors(text: str, counter: int) -> None:
    only_our_errors(lambda _: W.verify_solution(POW_KEY, text, counter, now=int(time.time())), None)


@given(counter=st.integers(min_value=-(2**80), max_value=2**80))
def test_pow_solution_with_a_real_challenge_raises_only_our_errors(counter: int) -> None:
    challenge = W.issue_challenge(POW_KEY, difficulty=8, now=int(time.time()))
    only_our_errors(lambda _: W.verify_solution(POW_KEY, challenge.to_text(), counter, now=int(time.time())), None)


# --- what a hostile server answers (client side) ---------------------------------------------------

ANSWERS: dict[str, tuple[Callable[[Any], object], Any]] = {
    "submit complete": (wire.submit_answer, {"contact": ID, "status": "complete", "receipt": _receipt_json()}),
    "submit pending": (wire.submit_answer, {"contact": ID, "status": "pending", "upload_token": "t" * 43}),
    "directory": (
        wire.directory_answer,
        {"directory": SIGNED.to_json(), "tree_head": HEAD.to_json(), "index": 0, "inclusion": [], "consistency": []},
    ),
    "log entries": (lambda v: wire.log_entries_answer(v, 1), {"entries": [SIGNED.to_json()]}),
    "challenge": (
        wire.challenge_answer,
        {
            "challenge": W.issue_challenge(POW_KEY, difficulty=8, now=int(time.time())).to_text(),
            "difficulty": 8,
            "memlimit_kib": 2048,
            "opslimit": 1,
            "expires": int(time.time()) + 600,
        },
    ),
    "chunk": (wire.chunk_answer, {"attachment": 0, "index": 0, "final": True}),
    "mailbox nonce": (wire.mailbox_nonce_answer, {"nonce": b64e(b"\x01" * 32), "expires": 1}),
    "mailbox messages": (
        lambda v: wire.mailbox_messages_answer(v, 10_000),
        {
            "messages": [{"id": ID, "contact": ID, "day": DAY, "seq": 1, "envelope": b64e(b"x" * 30)}],
            "contacts": [{"id": ID, "pool": "general"}],
        },
    ),
    "follow-up": (wire.follow_up_answer, {"message": ID, "receipt": _receipt_json()}),
    "case page": (staff_api.case_page, {"cases": [CASE], "next": None}),
    "case detail": (
        staff_api.case_detail,
        {
            **CASE,
            "messages": [{"id": ID, "kind": "reply", "day": DAY, "seq": 1, "server_sealed": False}],
            "escalations": [{"package": ID, "day": DAY}],
        },
    ),
    "envelope page": (
        lambda v: staff_api.envelope_page(v, first=True),
        {
            "cases": [
                {
                    **CASE,
                    "messages": [{"id": ID, "kind": "follow-up", "day": DAY, "seq": 1, "server_sealed": True}],
                    "escalations": [],
                    "envelope": b64e(b"e" * 40),
                }
            ],
            "next": f"{DAY}.{ID}",
            "total": 1,
        },
    ),
    "enrolment": (
        staff_api.enrolment_answer,
        {
            "username": "dana",
            "role": "handler",
            "totp_secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
            "otpauth_uri": "otpauth://totp/Safe%20Passage:dana?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
        },
    ),
    "session": (
        staff_api.session_answer,
        {"token": "s" * 43, "role": "handler", "idle_expires": 1, "absolute_expires": 2},
    ),
    "package": (package_answer, {"package": ID, "status": "pending", "upload_token": "u" * 43}),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
@given(data=st.data())
def test_client_answer_parsers_raise_only_our_errors(name: str, data: st.DataObject) -> None:
    parse, template = ANSWERS[name]
    parse(_copy(template))  # the template itself is a valid answer
    only_our_errors(parse, data.draw(mutated(template, root_object=True)))
    only_our_errors(parse, data.draw(json_objects))


@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=300))
def test_refusal_bodies_become_our_error(status: int, body: bytes) -> None:
    assert isinstance(wire.refusal(status, body), SafePassageError)


@pytest.mark.parametrize(
    "contacts",
    [
        [{"id": ID, "pool": "General"}],  # not a pool name
        [{"id": "short", "pool": "general"}],  # not an id
        [{"id": ID}],  # no pool
        [{"id": ID, "pool": "general", "extra": 1}],
        [{"id": ID, "pool": "general"}] * 51,  # more than a page may list
        {"id": ID, "pool": "general"},  # not a list
    ],
)
def test_a_mailbox_page_with_malformed_contacts_is_refused(contacts: object) -> None:
    answer = {"messages": [], "contacts": contacts}
    with pytest.raises(ProtocolViolation):
        wire.mailbox_messages_answer(answer, 10_000)  # type: ignore[arg-type]
    assert wire.mailbox_messages_answer({"messages": [], "contacts": [{"id": ID, "pool": "general"}] * 50}, 10) == ()
