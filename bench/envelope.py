"""Envelope seal/open throughput against the raw primitives it is made of.

Run with ``make bench``. Machines here are shared and noisy, so every figure is
a ratio against a baseline measured in the same run, interleaved round by
round: the baseline performs exactly the primitive calls an envelope needs
(X25519, ML-KEM-768, SHA3-256, HKDF, XChaCha20-Poly1305) with no framing,
sorting, padding or checks. A ratio of 1.0 means the envelope code adds
nothing; the target is >= 0.8.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from safepassage.crypto import _primitives as P
from safepassage.crypto import envelope as E
from safepassage.crypto import labels as L
from safepassage.crypto.keys import HybridPrivateKey

MESSAGE = b"m" * 3000  # smallest bucket (4 KiB)
#: Envelope rate over the rate of the raw primitive calls it is made of (issue 8).
TARGET = 0.8


def _raw_seal(publics: list[tuple[bytes, bytes, bytes]]) -> None:
    content_key = P.random_bytes(32)
    envelope_id = P.random_bytes(16)
    for pk_x, pk_m, kid in publics:
        eph = P.random_bytes(32)
        eph_pub = P.x25519_public_from_secret(eph)
        ss_x = P.x25519_shared(eph, pk_x)
        ss_m, ct_m = P.mlkem768_encapsulate(pk_m)
        wrap_key = P.sha3_256(L.HYBRID_COMBINER, ss_m, ss_x, ct_m, eph_pub, pk_x, kid)
        P.aead_seal(wrap_key, E.ZERO_NONCE, content_key, L.WRAP_AD + kid)
    header = bytes(E.envelope_length(0, len(publics)) - E.BUCKETS[0] - P.AEAD_TAG_LEN)
    # The key commitment: an HMAC over the header under a key derived from the content key.
    P.hmac_sha256(P.hkdf_sha256(content_key, salt=envelope_id, info=L.COMMIT_KEY, length=32), header)
    body_key = P.hkdf_sha256(content_key, salt=envelope_id, info=L.BODY_KEY, length=32)
    # The body binds the whole header as associated data.
    P.aead_seal(body_key, E.ZERO_NONCE, bytes(E.BUCKETS[0]), bytes(E.envelope_length(0, len(publics)) - E.BUCKETS[0]))


class _RawOpen:
    """The primitive calls of opening one stanza and the body, on inputs prepared outside the timing."""

    def __init__(self, key: HybridPrivateKey, sealed: E.SealedEnvelope) -> None:
        raw = key.private_bytes_raw()
        self.secret_x = raw[:32]
        self.mlkem = P.MlKemPrivate(raw[32:])
        self.eph_pub = P.x25519_public_from_secret(P.random_bytes(32))
        _, self.ct_m = P.mlkem768_encapsulate(key.public_key.mlkem)
        self.kid = key.key_id.raw
        self.wrap_key = P.random_bytes(32)
        self.content_key = P.random_bytes(32)
        self.wrapped = P.aead_seal(self.wrap_key, E.ZERO_NONCE, self.content_key, L.WRAP_AD + self.kid)
        self.header = sealed.data[: len(sealed.data) - E.BUCKETS[sealed.header.bucket] - P.AEAD_TAG_LEN]
        body_key = P.hkdf_sha256(self.content_key, salt=bytes(16), info=L.BODY_KEY, length=32)
        self.body = P.aead_seal(body_key, E.ZERO_NONCE, bytes(E.BUCKETS[sealed.header.bucket]), self.header)

    def __call__(self) -> None:
        ss_x = P.x25519_shared(self.secret_x, self.eph_pub)
        ss_m = self.mlkem.decapsulate(self.ct_m)
        P.sha3_256(L.HYBRID_COMBINER, ss_m, ss_x, self.ct_m, self.eph_pub, self.secret_x, self.kid)
        # The combiner output above cannot open a wrap made elsewhere; the AEAD
        # work is the same with the prepared key.
        content_key = P.aead_open(self.wrap_key, E.ZERO_NONCE, self.wrapped, L.WRAP_AD + self.kid)
        mac_key = P.hkdf_sha256(content_key, salt=bytes(16), info=L.COMMIT_KEY, length=32)
        P.constant_time_equal(P.hmac_sha256(mac_key, self.header[:-32]), self.header[-32:])
        body_key = P.hkdf_sha256(content_key, salt=bytes(16), info=L.BODY_KEY, length=32)
        P.aead_open(body_key, E.ZERO_NONCE, self.body, self.header)
        # The envelope hash (for receipts and chunk binding) covers every byte.
        P.sha256(self.header, self.body)


def _rate(fn: Callable[[], None], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def _row(name: str, subject: Callable[[], None], baseline: Callable[[], None], rounds: int, seconds: float) -> str:
    subject_rates, base_rates = [], []
    for _ in range(rounds):
        base_rates.append(_rate(baseline, seconds))
        subject_rates.append(_rate(subject, seconds))
    ratios = [s / b for s, b in zip(subject_rates, base_rates, strict=True)]
    median = statistics.median(ratios)
    verdict = "met" if median >= TARGET else "MISSED"
    return (
        f"| {name} | {statistics.median(subject_rates):,.0f}/s | {statistics.median(base_rates):,.0f}/s "
        f"| {median:.3f} | {min(ratios):.2f}-{max(ratios):.2f} | >= {TARGET} {verdict} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()

    keys = [HybridPrivateKey.generate() for _ in range(20)]
    print("| operation | envelope | raw primitives | ratio (median) | ratio (min-max) | target |")
    print("|---|---|---|---|---|---|")
    for n in (1, 5, 20):
        publics = [k.public_key for k in keys[:n]]
        raw_publics = [(p.x25519, p.mlkem, p.key_id.raw) for p in publics]
        sealed = E.seal(MESSAGE, publics, E.Purpose.CONTACT)
        opener = keys[0]

        def seal_env(publics: list = publics) -> None:  # type: ignore[type-arg]
            E.seal(MESSAGE, publics, E.Purpose.CONTACT)

        def open_env(data: bytes = sealed.data, opener: HybridPrivateKey = opener) -> None:
            E.open_envelope(data, [opener], expected_purpose=E.Purpose.CONTACT)

        print(
            _row(f"seal, {n} recipient(s)", seal_env, lambda rp=raw_publics: _raw_seal(rp), args.rounds, args.seconds)
        )
        print(
            _row(
                f"open, {n} recipient(s)",
                open_env,
                _RawOpen(opener, sealed),
                args.rounds,
                args.seconds,
            )
        )


if __name__ == "__main__":
    main()
