"""Codenames and applicant key derivation (section 9)."""

from __future__ import annotations

import math

import pytest

from safepassage.crypto.codename import (
    CODENAME_WORDS,
    ApplicantKeys,
    Codename,
    derive_applicant_keys,
    generate_codename,
    parse_codename,
    wordlist,
)
from safepassage.crypto.errors import InvalidCodename

# Cheaper Argon2id for tests that only check structure; known answers use the real cost.
FAST = {"opslimit": 1, "memlimit": 8 * 1024 * 1024}


def test_entropy_is_at_least_80_bits() -> None:
    assert CODENAME_WORDS * math.log2(len(wordlist())) >= 80


def test_generated_codenames_parse_and_differ() -> None:
    names = {generate_codename().reveal() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert parse_codename(name).reveal() == name


def test_normalisation() -> None:
    name = generate_codename().reveal()
    messy = "  " + name.upper().replace(" ", " \t\n ") + "\n"
    assert parse_codename(messy) == parse_codename(name)


def test_fullwidth_forms_normalise() -> None:
    # NFKC folds fullwidth Latin (as some keyboards type it) to ASCII.
    name = "abacus abdomen abdominal abide abiding ability ablaze"
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in name)
    assert parse_codename(fullwidth).reveal() == name


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("abacus abdomen", "2 words"),
        ("abacus abdomen abdominal abide abiding ability zzzzzz", "word 7"),
        ("", "0 words"),
    ],
)
def test_bad_codenames_name_the_problem_not_the_word(text: str, detail: str) -> None:
    with pytest.raises(InvalidCodename) as info:
        parse_codename(text)
    assert detail in str(info.value)
    assert "zzzzzz" not in str(info.value)


def test_codename_never_shows_in_repr() -> None:
    c = generate_codename()
    first = c.reveal().split()[0]
    assert first not in repr(c)
    assert first not in str(c)
    assert first not in f"{c}"


def test_derivation_is_deterministic_and_separates_keys() -> None:
    c = parse_codename("abacus abdomen abdominal abide abiding ability ablaze")
    a: ApplicantKeys = derive_applicant_keys(c, **FAST)
    b = derive_applicant_keys(Codename(tuple(c.reveal().split())), **FAST)
    assert a.mailbox_id == b.mailbox_id
    assert a.reply_key.public_key == b.reply_key.public_key
    other = derive_applicant_keys(parse_codename("abacus abdomen abdominal abide abiding ability able"), **FAST)
    assert other.mailbox_id != a.mailbox_id
    assert "abacus" not in repr(a)
