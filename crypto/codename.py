"""Codenames and the applicant keys derived from them (docs/protocol.md, section 9).

An applicant keeps one thing: a codename of seven words drawn uniformly from the
EFF large wordlist (7776 words, 12.9 bits each: 90.5 bits in all). Argon2id
stretches it into a master secret from which HKDF derives the applicant's reply
key (X25519 + ML-KEM-768) and mailbox signing key (Ed25519). The server only
ever sees the public halves, and a seized server holds nothing that helps guess
a codename beyond trying 2^90 of them, each costing an Argon2id evaluation.

The salt is a fixed protocol constant rather than random: the applicant must be
able to re-derive the keys from the codename alone, on any machine, and 90 bits
of entropy leave nothing for a precomputed table to gain.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from . import _primitives as P
from . import labels as L
from .errors import InvalidCodename
from .keys import HybridPrivateKey, KeyId, SigningKey

CODENAME_WORDS: Final = 7
WORDLIST_SIZE: Final = 7776
#: SHA-256 of crypto/wordlists/eff_large.txt; a changed list would change everyone's keys.
WORDLIST_SHA256: Final = "6d557f0693958fb5e650b68b5bee585eb82cf4da32965505c789e924743bc522"
#: Argon2id cost for codename stretching: 64 MiB, 3 passes (about 0.15 s on one core
#: here), cheap enough for the server to do once per no-JavaScript request.
CODENAME_OPSLIMIT: Final = 3
CODENAME_MEMLIMIT: Final = 64 * 1024 * 1024
CODENAME_SALT: Final = P.sha256(L.CODENAME_SALT)[:16]


@cache
def wordlist() -> tuple[str, ...]:
    data = resources.files("safepassage.crypto").joinpath("wordlists/eff_large.txt").read_bytes()
    if P.sha256(data).hex() != WORDLIST_SHA256:
        raise RuntimeError("the codename wordlist is not the one the protocol names")
    words = tuple(data.decode("ascii").split())
    if len(words) != WORDLIST_SIZE or len(set(words)) != WORDLIST_SIZE:
        raise RuntimeError("the codename wordlist has the wrong size")
    return words


@cache
def _word_set() -> frozenset[str]:
    return frozenset(wordlist())


class Codename:
    """A normalised codename. Its repr and str never show the words."""

    __slots__ = ("_words",)

    def __init__(self, words: tuple[str, ...]) -> None:
        # Validated here too, so no path can derive keys from something that is
        # not a list codename (and no encoding error can quote its words).
        known = _word_set()
        if len(words) != CODENAME_WORDS:
            raise InvalidCodename(f"it has {len(words)} words, not {CODENAME_WORDS}")
        for position, word in enumerate(words, start=1):
            if word not in known:
                # Name the position, never the word: error text can end up in logs.
                raise InvalidCodename(f"word {position} is not in the list")
        self._words = tuple(words)

    def reveal(self) -> str:
        """The codename as the applicant writes it down. Show it once; never log it."""
        return " ".join(self._words)

    def __repr__(self) -> str:
        return "Codename(<secret>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codename) and P.constant_time_equal(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash(self._words)


def generate_codename() -> Codename:
    words = wordlist()
    return Codename(tuple(secrets.choice(words) for _ in range(CODENAME_WORDS)))


def parse_codename(text: str) -> Codename:
    """Normalise what a person typed: any case, any whitespace, compatibility forms."""
    if not isinstance(text, str) or len(text) > 512:
        raise InvalidCodename()
    return Codename(tuple(unicodedata.normalize("NFKC", text).lower().split()))


@dataclass(frozen=True, slots=True, repr=False)
class ApplicantKeys:
    """The keys an applicant re-derives from the codename each time."""

    reply_key: HybridPrivateKey
    mailbox_key: SigningKey

    @property
    def mailbox_id(self) -> KeyId:
        return self.mailbox_key.verify_key.key_id

    def __repr__(self) -> str:
        return f"ApplicantKeys(<secret>, mailbox={self.mailbox_id.short()}...)"


def derive_applicant_keys(
    codename: Codename, *, opslimit: int = CODENAME_OPSLIMIT, memlimit: int = CODENAME_MEMLIMIT
) -> ApplicantKeys:
    master = P.argon2id(
        codename.reveal().encode("ascii"), CODENAME_SALT, opslimit=opslimit, memlimit=memlimit, length=32
    )

    def sub(label: bytes, length: int) -> bytes:
        return P.hkdf_sha256(master, salt=b"", info=label, length=length)

    x25519 = sub(L.CODENAME_REPLY_X25519, P.X25519_KEY_LEN)
    mlkem_seed = sub(L.CODENAME_REPLY_MLKEM, P.MLKEM768_SEED_LEN)
    return ApplicantKeys(
        reply_key=HybridPrivateKey(x25519 + mlkem_seed),
        mailbox_key=SigningKey(sub(L.CODENAME_MAILBOX, P.ED25519_SEED_LEN)),
    )
