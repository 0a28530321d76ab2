"""The label table in docs/protocol.md and crypto/labels.py say the same thing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from safepassage.crypto import labels

SPEC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| `(b\".*?\")` \|", re.MULTILINE)


def _spec_labels() -> dict[str, bytes]:
    rows = ROW.findall(SPEC.read_text(encoding="utf-8"))
    out: dict[str, bytes] = {}
    for name, literal in rows:
        assert name not in out, f"{name} listed twice in the spec"
        out[name] = ast.literal_eval(literal)
    return out


def _code_labels() -> dict[str, bytes]:
    return {k: v for k, v in vars(labels).items() if k.isupper() and isinstance(v, bytes)}


def test_spec_and_code_list_the_same_labels() -> None:
    spec, code = _spec_labels(), _code_labels()
    assert len(spec) >= 30
    assert spec == code


def test_no_label_value_repeats() -> None:
    values = list(_code_labels().values())
    assert len(values) == len(set(values))


def test_signature_purposes_cannot_be_confused() -> None:
    purposes = [v for k, v in _code_labels().items() if k.startswith("SIG_")]
    assert len(purposes) >= 9
    assert all(b"\x00" not in p and p for p in purposes)
    # The 0x00 separator already makes SIGNATURE || p || 0x00 unambiguous; on top
    # of that no purpose is a prefix of another, so even a verifier that forgot
    # the separator could not confuse two kinds of signed document.
    for a in purposes:
        for b in purposes:
            assert a == b or not b.startswith(a), (a, b)
