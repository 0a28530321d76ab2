"""Application-level proof of work (docs/protocol.md, section 12).

Behind Tor there is no client address to rate-limit, so the intake asks each
submission to carry a little work instead. The server issues a challenge it can
later recognise without storing anything (an HMAC under its own key covers every
field, so a client cannot lower the difficulty or extend the expiry), the client
searches for a counter whose Argon2id hash has enough leading zero bits, and the
server checks the MAC (one HMAC, cheap) before it spends one Argon2id evaluation
on the work.

Argon2id rather than SHA-256: every attempt must fill and read back a few MiB of
memory, which narrows (though does not close) the gap between a GPU or a
dedicated machine and the applicant's laptop running it in a browser.

Single use is the server's job, not this module's: :class:`VerifiedPow` carries
the nonce and expiry so the server can record the nonce as spent, in its shared
database, until the challenge expires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import _primitives as P
from . import labels as L
from .encoding import Reader, b64d, b64e, u8, u32, u64
from .errors import MalformedInput, PowRejected, UnsupportedVersion
from .intake import MAILBOX_NONCE_LEN

NONCE_LEN: Final = 16
MAC_LEN: Final = 32
POW_KEY_LEN: Final = 32
MAC_INPUT_LEN: Final = len(L.POW_MAGIC) + NONCE_LEN + 8 + 1 + 4 + 1  # 34
CHALLENGE_LEN: Final = MAC_INPUT_LEN + MAC_LEN  # 66
HASH_LEN: Final = 32
MAX_COUNTER: Final = 2**64 - 1

#: Bounds checked when a challenge is issued, verified, and before a client solves it.
MIN_DIFFICULTY: Final = 0
MAX_DIFFICULTY: Final = 24
MIN_MEMLIMIT_KIB: Final = 1024
MAX_MEMLIMIT_KIB: Final = 64 * 1024
MIN_OPSLIMIT: Final = 1
MAX_OPSLIMIT: Final = 4
MIN_LIFETIME: Final = 1
MAX_LIFETIME: Final = 3600

#: Recommended defaults (measurements in docs/protocol.md, section 12.6): one
#: attempt at 2 MiB, one pass costs about 1.1 ms natively, so difficulty 10
#: (1024 attempts expected) is about 1.1 s of native work for the applicant,
#: and about 1.1 ms for the server to verify.
DEFAULT_MEMLIMIT_KIB: Final = 2 * 1024
DEFAULT_OPSLIMIT: Final = 1
DEFAULT_DIFFICULTY: Final = 10
DEFAULT_LIFETIME: Final = 600

#: A constant salt: the nonce inside the hashed input already makes every
#: challenge's search space fresh, so the salt only separates this use of Argon2id.
POW_SALT: Final = P.sha256(L.POW_SALT)[:16]
#: Mailbox nonce (protocol 15.4): 12 random bytes, u32 expiry, 16-byte MAC.
MAILBOX_NONCE_RANDOM: Final = 12
MAILBOX_NONCE_MAC_LEN: Final = MAILBOX_NONCE_LEN - MAILBOX_NONCE_RANDOM - 4


class PowKey:
    """The server's 32-byte secret for authenticating challenges. Never leaves the server."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != POW_KEY_LEN:
            raise MalformedInput(f"proof-of-work key must be {POW_KEY_LEN} bytes")
        self._raw = raw

    @classmethod
    def generate(cls) -> PowKey:
        return cls(P.random_bytes(POW_KEY_LEN))

    @classmethod
    def from_bytes(cls, raw: bytes) -> PowKey:
        return cls(raw)

    def secret_bytes_raw(self) -> bytes:
        """The secret key. Only the server's key file code may call this."""
        return self._raw

    def _mac(self, message: bytes) -> bytes:
        return P.hmac_sha256(self._raw, L.POW_MAC + message)

    def mailbox_nonce(self, mailbox_id: bytes, expires: int) -> bytes:
        """A mailbox-authentication nonce (protocol 15.4) the server recognises without storing it."""
        if not _is_uint(expires, 2**32 - 1):
            raise MalformedInput("mailbox nonce expiry out of range")
        body = P.random_bytes(MAILBOX_NONCE_RANDOM) + u32(expires)
        return body + self._mailbox_mac(mailbox_id, body)

    def check_mailbox_nonce(self, mailbox_id: bytes, nonce: bytes, now: int) -> int:
        """The nonce's expiry, if this key issued it for ``mailbox_id`` and it is still live.

        Raises ``PowRejected`` otherwise (one HMAC, no lookup); single use is the caller's job.
        """
        if len(nonce) != MAILBOX_NONCE_LEN:
            raise MalformedInput(f"mailbox nonce must be {MAILBOX_NONCE_LEN} bytes")
        body, mac = nonce[:-MAILBOX_NONCE_MAC_LEN], nonce[-MAILBOX_NONCE_MAC_LEN:]
        if not P.constant_time_equal(self._mailbox_mac(mailbox_id, body), mac):
            raise PowRejected("mailbox nonce not issued for this mailbox")
        expires = int.from_bytes(body[MAILBOX_NONCE_RANDOM:], "big")
        if now >= expires:
            raise PowRejected("mailbox nonce expired")
        return expires

    def _mailbox_mac(self, mailbox_id: bytes, body: bytes) -> bytes:
        # Its own label: a proof-of-work challenge can never pass for a mailbox nonce or back.
        return P.hmac_sha256(self._raw, L.MAILBOX_NONCE_MAC + u8(len(mailbox_id)) + mailbox_id + body)[
            :MAILBOX_NONCE_MAC_LEN
        ]

    def __repr__(self) -> str:
        return "PowKey(<secret>)"

    __str__ = __repr__


def _mac_input(nonce: bytes, expires: int, difficulty: int, memlimit_kib: int, opslimit: int) -> bytes:
    return L.POW_MAGIC + nonce + u64(expires) + u8(difficulty) + u32(memlimit_kib) + u8(opslimit)


def _is_uint(value: object, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge as issued by the server; nothing in it is secret."""

    nonce: bytes
    expires: int
    difficulty: int
    memlimit_kib: int
    opslimit: int
    mac: bytes

    def __post_init__(self) -> None:
        # Only what the wire format can carry; the policy bounds are checked
        # separately (and, on the server, only after the MAC).
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_LEN:
            raise MalformedInput(f"challenge nonce must be {NONCE_LEN} bytes")
        if not isinstance(self.mac, bytes) or len(self.mac) != MAC_LEN:
            raise MalformedInput(f"challenge mac must be {MAC_LEN} bytes")
        widths = (
            (self.expires, 2**64 - 1),
            (self.difficulty, 255),
            (self.memlimit_kib, 2**32 - 1),
            (self.opslimit, 255),
        )
        if not all(_is_uint(value, maximum) for value, maximum in widths):
            raise MalformedInput("challenge field out of range")

    def mac_input(self) -> bytes:
        """Every byte before the MAC."""
        return _mac_input(self.nonce, self.expires, self.difficulty, self.memlimit_kib, self.opslimit)

    def to_bytes(self) -> bytes:
        return self.mac_input() + self.mac

    def to_text(self) -> str:
        return b64e(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Challenge:
        if not isinstance(data, bytes) or len(data) != CHALLENGE_LEN:
            raise MalformedInput(f"a challenge must be {CHALLENGE_LEN} bytes")
        r = Reader(data, "challenge")
        magic = r.take(len(L.POW_MAGIC))
        if magic != L.POW_MAGIC:
            if magic[:3] == L.POW_MAGIC[:3]:
                raise UnsupportedVersion(f"challenge version {magic[3]}")
            raise MalformedInput("not a Safe Passage challenge")
        challenge = cls(
            nonce=r.take(NONCE_LEN),
            expires=r.u64(),
            difficulty=r.u8(),
            memlimit_kib=r.u32(),
            opslimit=r.u8(),
            mac=r.take(MAC_LEN),
        )
        r.end()
        return challenge

    @classmethod
    def from_text(cls, text: str) -> Challenge:
        if not isinstance(text, str) or len(text) > 2 * CHALLENGE_LEN:
            raise MalformedInput("challenge text has the wrong length")
        return cls.from_bytes(b64d(text, length=CHALLENGE_LEN, what="challenge"))


@dataclass(frozen=True, slots=True)
class CheckedChallenge:
    """A challenge whose MAC, expiry and bounds have been checked. Made only by :func:`check_challenge`."""

    challenge: Challenge


@dataclass(frozen=True, slots=True)
class VerifiedPow:
    """An accepted solution. The server MUST record ``nonce`` as spent until ``expires``."""

    nonce: bytes
    expires: int


# --- shared rules -----------------------------------------------------------------------------


def _within_bounds(difficulty: int, memlimit_kib: int, opslimit: int) -> bool:
    return (
        _is_uint(difficulty, MAX_DIFFICULTY)
        and _is_uint(memlimit_kib, MAX_MEMLIMIT_KIB)
        and memlimit_kib >= MIN_MEMLIMIT_KIB
        and _is_uint(opslimit, MAX_OPSLIMIT)
        and opslimit >= MIN_OPSLIMIT
    )


def _work_hash(challenge_bytes: bytes, counter: int, *, memlimit_kib: int, opslimit: int) -> bytes:
    password = L.POW_INPUT + challenge_bytes + u64(counter)
    return P.argon2id(password, POW_SALT, opslimit=opslimit, memlimit=memlimit_kib * 1024, length=HASH_LEN)


def _meets(digest: bytes, difficulty: int) -> bool:
    """True when the first ``difficulty`` bits of ``digest`` are zero."""
    return difficulty == 0 or int.from_bytes(digest, "big") >> (8 * len(digest) - difficulty) == 0


# --- server: issue --------------------------------------------------------------------------


def issue_challenge(
    key: PowKey,
    *,
    difficulty: int,
    now: int,
    lifetime: int = DEFAULT_LIFETIME,
    memlimit_kib: int = DEFAULT_MEMLIMIT_KIB,
    opslimit: int = DEFAULT_OPSLIMIT,
) -> Challenge:
    """A fresh challenge valid from ``now`` (Unix seconds) for ``lifetime`` seconds.

    Parameters outside the protocol bounds are a server configuration error and
    raise :class:`ValueError`.
    """
    if not _within_bounds(difficulty, memlimit_kib, opslimit):
        raise ValueError("proof-of-work difficulty, memory or passes outside the protocol bounds")
    if not (_is_uint(lifetime, MAX_LIFETIME) and lifetime >= MIN_LIFETIME):
        raise ValueError(f"challenge lifetime must be {MIN_LIFETIME}..{MAX_LIFETIME} seconds")
    if not _is_uint(now, MAX_COUNTER - MAX_LIFETIME):
        raise ValueError("now must be a Unix time in seconds")
    nonce, expires = P.random_bytes(NONCE_LEN), now + lifetime
    mac = key._mac(_mac_input(nonce, expires, difficulty, memlimit_kib, opslimit))
    return Challenge(nonce, expires, difficulty, memlimit_kib, opslimit, mac)


# --- client: solve --------------------------------------------------------------------------


def solve(
    challenge: Challenge,
    *,
    max_attempts: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Find a counter that satisfies ``challenge``.

    Counters are tried from 0 upwards; the expected number of attempts is
    ``2**difficulty``. ``progress`` is called after every attempt with the number
    of attempts so far. Raises :class:`PowRejected` if the challenge asks for more
    than the protocol allows (a client must not let a server make it allocate
    without bound) or if ``max_attempts`` run out.
    """
    if not _within_bounds(challenge.difficulty, challenge.memlimit_kib, challenge.opslimit):
        raise PowRejected("challenge parameters out of bounds")
    if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 0):
        raise ValueError("max_attempts must be a non-negative integer")
    data = challenge.to_bytes()
    counter = 0
    while (max_attempts is None or counter < max_attempts) and counter <= MAX_COUNTER:
        digest = _work_hash(data, counter, memlimit_kib=challenge.memlimit_kib, opslimit=challenge.opslimit)
        if progress is not None:
            progress(counter + 1)
        if _meets(digest, challenge.difficulty):
            return counter
        counter += 1
    raise PowRejected(f"no solution within {counter} attempts")


# --- server: verify -------------------------------------------------------------------------


def check_challenge(key: PowKey, challenge_text: str, *, now: int) -> CheckedChallenge:
    """The cheap checks, in order: decoding, MAC, expiry, bounds. No Argon2id here.

    A server that wants each issued challenge to cost it at most one Argon2id
    evaluation records the nonce as spent after this call and before
    :func:`verify_work`.
    """
    challenge = Challenge.from_text(challenge_text)
    # The MAC first: until it verifies, nothing else in the challenge is ours.
    if not P.constant_time_equal(key._mac(challenge.mac_input()), challenge.mac):
        raise PowRejected("bad mac")
    if now >= challenge.expires:
        raise PowRejected("expired")
    if challenge.expires - now > MAX_LIFETIME:
        # Only possible with a skewed clock or a leaked key; either way, refuse
        # rather than keep a nonce in the spent list for longer than promised.
        raise PowRejected("expiry too far ahead")
    if not _within_bounds(challenge.difficulty, challenge.memlimit_kib, challenge.opslimit):
        raise PowRejected("parameters out of bounds")
    return CheckedChallenge(challenge)


def verify_work(checked: CheckedChallenge, counter: int) -> VerifiedPow:
    """The expensive check: one Argon2id evaluation. Raises :class:`PowRejected` ("insufficient work")."""
    if not _is_uint(counter, MAX_COUNTER):
        raise MalformedInput("counter must be an integer in 0..2^64-1")
    challenge = checked.challenge
    digest = _work_hash(challenge.to_bytes(), counter, memlimit_kib=challenge.memlimit_kib, opslimit=challenge.opslimit)
    if not _meets(digest, challenge.difficulty):
        raise PowRejected("insufficient work")
    return VerifiedPow(nonce=challenge.nonce, expires=challenge.expires)


def verify_solution(key: PowKey, challenge_text: str, counter: int, *, now: int) -> VerifiedPow:
    """Check a submitted solution; raise :class:`PowRejected` or :class:`MalformedInput` unless it is valid.

    This does not know whether the nonce was used before: the caller MUST record
    the returned nonce as spent until its expiry and refuse it a second time.
    """
    return verify_work(check_challenge(key, challenge_text, now=now), counter)


__all__ = [
    "CHALLENGE_LEN",
    "DEFAULT_DIFFICULTY",
    "DEFAULT_LIFETIME",
    "DEFAULT_MEMLIMIT_KIB",
    "DEFAULT_OPSLIMIT",
    "MAX_DIFFICULTY",
    "MAX_LIFETIME",
    "MAX_MEMLIMIT_KIB",
    "MAX_OPSLIMIT",
    "MIN_LIFETIME",
    "MIN_MEMLIMIT_KIB",
    "MIN_OPSLIMIT",
    "Challenge",
    "CheckedChallenge",
    "PowKey",
    "VerifiedPow",
    "check_challenge",
    "issue_challenge",
    "solve",
    "verify_solution",
    "verify_work",
]
