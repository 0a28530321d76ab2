"""Regression tests for bugs found in the security review of crypto/.

Each test was written to fail on the code as reviewed and to pass once the bug
is fixed; the docstrings describe the bug as it was found. They stay so the
bugs stay fixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from safepassage.crypto import _primitives as P
from safepassage.crypto import envelope as E
from safepassage.crypto import labels as L
from safepassage.crypto.codename import Codename, derive_applicant_keys
from safepassage.crypto.directory import IntakeKey, SignedDirectory
from safepassage.crypto.encoding import parse_canonical_json
from safepassage.crypto.errors import DecryptionFailed, MalformedInput, SafePassageError
from safepassage.crypto.intake import AttachmentInfo, Contact
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.vault import (
    MIN_MEMLIMIT,
    MIN_OPSLIMIT,
    Passphrase,
    VaultContents,
    create_vault,
    open_vault,
    save_vault,
)

from .helpers import WEEK, Org, hybrid_key, signing_key

# --- 1. canonical JSON: a library exception escapes the parser ---------------------------------


def test_huge_json_integer_raises_our_error_not_valueerror() -> None:
    """parse_canonical_json lets a bare ValueError escape (spec 1.3: MUST NOT).

    CPython 3.11+ refuses to convert an integer literal of more than 4300 digits
    (sys.int_info.str_digits_check_threshold) and raises ``ValueError``, which is
    not a ``JSONDecodeError`` and is not caught in encoding.py:116-124. Any
    document parser with max_len > 4300 is affected: a hostile server can crash
    a client with a 4.3 kB directory (``SignedDirectory.from_bytes``), and the
    vault payload parser likewise. Fix: catch ``ValueError`` (JSONDecodeError
    is a subclass) or pass ``parse_int`` that rejects more than 16 digits
    before converting (which also bounds CPU).
    """
    with pytest.raises(MalformedInput):
        parse_canonical_json(b"9" * 4301, max_len=1 << 20)
    with pytest.raises(MalformedInput):
        SignedDirectory.from_bytes(b'{"directory":{"version":' + b"1" * 5000 + b'},"signatures":[]}')
    # Inside a sealed contact the server cannot see it: a hostile applicant's
    # contact crashes the handler client that opens it.
    with pytest.raises(MalformedInput):
        Contact.open_payload(b'{"contact":{"attachments":[{"size":' + b"7" * 5000 + b"}]}}")


# --- 2. directory: intake keys that nobody can seal to ---------------------------------------


def _directory_with_alice_key(org: Org, key: HybridPublicKey) -> object:
    intake = IntakeKey.create("alice", org.identities["alice"], key, not_before=0, not_after=WEEK)
    alice = replace(org.handler("alice"), intake_keys=(intake,))
    return org.directory(1, handlers=(alice, org.handler("bob"), org.handler("carol")))


@pytest.mark.parametrize("half", ["x25519-low-order", "mlkem-modulus"])
def test_directory_refuses_an_intake_key_that_cannot_be_sealed_to(half: str) -> None:
    """A single rogue handler can block every contact to every pool it is in.

    Neither ``HybridPublicKey`` (keys.py:152) nor the directory consistency check
    (directory.py:394) validates the two halves of a hybrid key. A handler can
    sign (with its own identity key, which it holds) an intake key whose X25519
    half is of small order or whose ML-KEM encapsulation key fails the FIPS 203
    modulus check. The admins co-sign it (fingerprints look fine), the directory
    verifies, and then every ``seal`` to that pool raises ``MalformedInput``
    (envelope.py:186-187). Section 7.3 says a contact MUST be sealed to exactly
    the current intake keys of the pool and the server MUST refuse any other
    set, so applicants cannot route around the bad key: the pool is silently
    closed. Fix: validate both halves when a HybridPublicKey is built from
    untrusted bytes (X25519: reject the small-order points / do a test
    scalarmult; ML-KEM: ``MLKEM768PublicKey.from_public_bytes``) and reject such
    a key as MalformedInput when the directory is parsed.
    """
    org = Org()
    good = org.intake["alice"].public_key
    try:
        if half == "x25519-low-order":
            bad = HybridPublicKey(bytes(32) + good.mlkem)
        else:
            bad = HybridPublicKey(good.x25519 + b"\xff" * P.MLKEM768_PUBLIC_LEN)
        directory = _directory_with_alice_key(org, bad)
        SignedDirectory.from_bytes(org.signed(directory).to_bytes())  # type: ignore[arg-type]
    except MalformedInput:
        return  # fixed: the key is refused before anyone trusts it
    recipients = [k for _, k in directory.recipients("general", now=10)]  # type: ignore[attr-defined]
    try:
        E.seal(b"I want to leave.", recipients, E.Purpose.CONTACT)
    except MalformedInput:
        pytest.fail("a trusted directory makes every contact to the pool unsealable")


# --- 3. attachments: the chunk nonce can be reused ---------------------------------------------


def test_second_sealer_for_the_same_attachment_cannot_reuse_nonces() -> None:
    """``SealedEnvelope.attachment_sealer(a)`` can be called twice (envelope.py:157).

    Each call starts a new ChunkSealer at index 0 under the same chunk key, and
    the nonce is ``u16(a) || u32(i) || 0^18`` (envelope.py:310), so chunk i of
    both streams uses the same (key, nonce): XChaCha20 keystream reuse (XOR of
    the two ciphertexts is the XOR of the two plaintexts) and Poly1305 one-time
    key reuse (forgeries). A client that re-seals an attachment after the user
    replaces the file, retries an upload by re-sealing, or numbers two
    attachments the same, leaks plaintext to the server. Fix: keep the set of
    attachment numbers already handed out in the SealedEnvelope (e.g. in the
    _ContentKey holder) and raise on a second request for the same number.
    """
    pk = hybrid_key("review-chunk").public_key
    sealed = E.seal(b"see attachment", [pk], E.Purpose.CONTACT)
    first_plain = b"scan of my diplomatic passport, page 1".ljust(64, b".")
    second_plain = b"list of officers in my department....".ljust(64, b".")
    first = sealed.attachment_sealer(0).seal_chunk(first_plain, final=True)
    try:
        again = sealed.attachment_sealer(0)
    except SafePassageError:
        return  # fixed: a second sealer for attachment 0 is refused
    second = again.seal_chunk(second_plain, final=True)
    xor_ct = bytes(a ^ b for a, b in zip(first[E.CHUNK_HEADER_LEN :], second[E.CHUNK_HEADER_LEN :], strict=False))
    xor_pt = bytes(a ^ b for a, b in zip(first_plain, second_plain, strict=True))
    assert xor_ct[4 : 4 + len(xor_pt)] != xor_pt, "keystream reused: ciphertext XOR reveals plaintext XOR"


# --- 4. envelope: no key commitment (one envelope, two plaintexts) -------------------------------

_M32 = 0xFFFFFFFF
_P1305 = (1 << 130) - 5


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _M32) | (v >> (32 - c))


def _rounds(s: list[int]) -> None:
    def qr(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & _M32
        s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & _M32
        s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & _M32
        s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & _M32
        s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15)):
            qr(a, b, c, d)
        for a, b, c, d in ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            qr(a, b, c, d)


def _words(b: bytes) -> list[int]:
    return [int.from_bytes(b[i : i + 4], "little") for i in range(0, len(b), 4)]


_SIGMA = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]


def _poly_key(aead_key: bytes) -> tuple[int, int]:
    """Poly1305 (r, s) that libsodium's XChaCha20-Poly1305-IETF uses for ``aead_key`` with a zero nonce."""
    s = _SIGMA + _words(aead_key) + _words(bytes(16))  # HChaCha20(key, nonce[0:16])
    _rounds(s)
    subkey = b"".join(w.to_bytes(4, "little") for w in s[0:4] + s[12:16])
    init = _SIGMA + _words(subkey) + [0] + _words(bytes(12))  # ChaCha20 block 0, nonce 0^4 || nonce[16:24]
    x = list(init)
    _rounds(x)
    block = b"".join(((a + b) & _M32).to_bytes(4, "little") for a, b in zip(x, init, strict=True))
    r = int.from_bytes(block[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    return r, int.from_bytes(block[16:32], "little")


def _poly_blocks(ad: bytes, ct: bytes) -> list[int]:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 16)

    data = pad(ad) + pad(ct) + len(ad).to_bytes(8, "little") + len(ct).to_bytes(8, "little")
    return [int.from_bytes(data[i : i + 16], "little") + (1 << 128) for i in range(0, len(data), 16)]


def _horner(blocks: list[int], r: int) -> int:
    h = 0
    for m in blocks:
        h = (h + m) * r % _P1305
    return h


def _wrap_stanza(pk: HybridPublicKey, content_key: bytes, prefix: bytes) -> bytes:
    """One stanza, built from the text of section 4.3 (not from envelope.py)."""
    e = P.random_bytes(32)
    ct_x = P.x25519_public_from_secret(e)
    ss_x = P.x25519_shared(e, pk.x25519)
    ss_m, ct_m = P.mlkem768_encapsulate(pk.mlkem)
    kid = pk.key_id.raw
    wrap_key = P.sha3_256(L.HYBRID_COMBINER, ss_m, ss_x, ct_m, ct_x, pk.x25519, kid)
    return kid + ct_x + ct_m + P.aead_seal(wrap_key, bytes(24), content_key, L.WRAP_AD + prefix + kid)


def _salamander(key_a: HybridPrivateKey, key_b: HybridPrivateKey, for_a: bytes, for_b: bytes) -> bytes:
    """A two-recipient envelope whose body opens, with a valid tag, to different text for each recipient."""
    size = E.BUCKETS[4]
    full = size - 4
    envelope_id = hashlib.sha256(b"review salamander envelope id").digest()[:16]

    def body_key(k: bytes) -> bytes:
        return P.hkdf_sha256(k, salt=envelope_id, info=L.BODY_KEY, length=32)

    def keystream(k: bytes, n: int) -> bytes:
        return P.aead_seal(body_key(k), bytes(24), bytes(n), b"")[:n]

    # A's plaintext fills the bucket (no zero padding to satisfy); B's length prefix
    # is whatever A's forces on it, so grind B's content key until it is in range.
    key_for_a = hashlib.sha256(b"review content key A").digest()
    ks_a4 = keystream(key_for_a, 4)
    counter = 0
    while True:
        key_for_b = hashlib.sha256(b"review content key B" + counter.to_bytes(4, "big")).digest()
        counter += 1
        head = bytes(a ^ b for a, b in zip(ks_a4, full.to_bytes(4, "big"), strict=True))
        n_b = int.from_bytes(bytes(a ^ b for a, b in zip(head, keystream(key_for_b, 4), strict=True)), "big")
        if 16384 <= n_b <= full:
            break
    ks_a, ks_b = keystream(key_for_a, size), keystream(key_for_b, size)

    # Ciphertext: B's zero padding after 4 + n_b; B's text at 4; A's text at 8192;
    # one free 16-byte block at 4096; everything else is garbage to both.
    ct = bytearray(ks_b)
    ct[0:4] = head
    ct[4 : 4 + len(for_b)] = bytes(a ^ b for a, b in zip(for_b, ks_b[4:], strict=False))
    ct[8192 : 8192 + len(for_a)] = bytes(a ^ b for a, b in zip(for_a, ks_a[8192:], strict=False))
    free, tweak = 4096, 6144

    prefix = L.ENVELOPE_MAGIC + bytes([E.Purpose.CONTACT, 4, 2]) + envelope_id
    pairs = sorted([(key_a.public_key, key_for_a), (key_b.public_key, key_for_b)], key=lambda p: p[0].key_id.raw)
    header = prefix + b"".join(_wrap_stanza(pk, k, prefix) for pk, k in pairs)
    # Since the fix the header ends with a commitment to the content key; the
    # attacker can commit to only one of the two keys (A's, here).
    commit_key = P.hkdf_sha256(key_for_a, salt=envelope_id, info=L.COMMIT_KEY, length=32)
    header += P.hmac_sha256(commit_key, header)

    (r_a, s_a), (r_b, s_b) = _poly_key(body_key(key_for_a)), _poly_key(body_key(key_for_b))
    ad_blocks = (len(header) + 15) // 16
    while True:
        ct[free : free + 16] = bytes(16)
        blocks = _poly_blocks(header, bytes(ct))
        e = len(blocks) - (ad_blocks + free // 16)
        base_a, base_b = _horner(blocks, r_a), _horner(blocks, r_b)
        ra_e, rb_e = pow(r_a, e, _P1305), pow(r_b, e, _P1305)
        inv = pow((ra_e - rb_e) % _P1305, -1, _P1305)
        delta = (s_b - s_a) % (1 << 128)
        for t in range(-5, 5):
            target = delta + t * (1 << 128)
            x = (target - base_a + base_b) * inv % _P1305
            if x >= 1 << 128:
                continue
            h_a, h_b = (base_a + x * ra_e) % _P1305, (base_b + x * rb_e) % _P1305
            tag_a, tag_b = (h_a + s_a) % (1 << 128), (h_b + s_b) % (1 << 128)
            if tag_a == tag_b:
                ct[free : free + 16] = x.to_bytes(16, "little")
                return header + bytes(ct) + tag_a.to_bytes(16, "little")
        ct[tweak] ^= 1  # change a byte both recipients ignore, and try again


def test_every_recipient_of_one_envelope_reads_the_same_plaintext() -> None:
    """The envelope does not commit to its content key: one envelope, two messages.

    Each stanza wraps the content key independently and nothing in the header
    commits to it (envelope.py:161-205, spec 4.3-4.4). A sender may wrap a
    different content key for each recipient. Poly1305 is not key-committing, so
    a body can be built (a linear equation mod 2^130-5, solved below in well
    under a second) whose tag verifies under both derived body keys; each
    recipient then opens the *same bytes*, with the *same envelope hash* and the
    same server receipt, to a *different* plaintext. A planted applicant can show
    handler A one contact and handler B another (e.g. a lure or tracking link
    only one of them sees, or contradictory statements that discredit a
    handler's report to colleagues or the integration service); a rogue handler
    can do the same to the integration service's keys in an escalation. The
    envelope hash in receipts and audit logs does not identify the plaintext.

    Fix: commit to the content key in the header, as age does with its header
    MAC: append ``mac = HMAC-SHA-256(HKDF(content_key, envelope_id, COMMIT_LABEL),
    header_so_far)`` after the stanzas and check it (constant time) right after
    unwrapping, before opening the body; or put
    ``SHA-256(COMMIT_LABEL || envelope_id || content_key)`` in the prefix. Both
    need a new label and a spec change (envelope v2 / new magic).
    """
    key_a, key_b = hybrid_key("review-handler-a"), hybrid_key("review-handler-b")
    for_a = b"To handler A: meet me at the embassy on Friday."
    for_b = b"To handler B: I have nothing to offer, please delete this."
    envelope = _salamander(key_a, key_b, for_a, for_b)
    E.parse_header(envelope)  # well formed, as the server checks it

    opened: list[bytes | None] = []
    for key in (key_a, key_b):
        try:
            opened.append(E.open_envelope(envelope, [key], expected_purpose=E.Purpose.CONTACT).plaintext)
        except DecryptionFailed:
            opened.append(None)
    # Fixed: A (whose key the header commits to) reads its text; B is refused.
    assert opened[0] is not None
    assert for_a in opened[0]
    assert opened[1] is None
    if None not in opened:
        a, b = opened
        assert a is not None
        assert b is not None
        assert a == b, (
            "one envelope opened to two different plaintexts: "
            f"A sees {for_a!r} at offset 8188: {a[8188 : 8188 + len(for_a)] == for_a}, "
            f"B's starts with {for_b!r}: {b.startswith(for_b)}"
        )


# --- 5. vault: saving through a symlink leaves the old vault, destroyed keys included -----------


def test_save_through_a_symlink_does_not_leave_the_old_vault_behind(tmp_path: Path) -> None:
    """``save_vault`` reads through a symlink but replaces the link itself.

    ``_read_private`` opens the path with symlinks followed (privatefile.py:29) while
    ``os.replace(tmp, path)`` (privatefile.py:104) renames over the *link*, so the new
    vault lands in the link's directory and the real file, with every key the
    user just removed, stays intact and readable. Section 14 relies on destroyed
    intake keys being gone from the handler's machine (forward secrecy); a vault
    kept behind a symlink (dotfile managers, a vault moved to an encrypted
    volume) silently defeats that. ``create_vault`` already refuses symlinks;
    open/save/change_passphrase do not. Fix: open with ``O_NOFOLLOW`` and refuse
    a symlink (``InsecureFile``/``MalformedInput``) in ``privatefile.read_private``
    (which also reads the server's key files), or resolve the path once
    (``os.path.realpath``) and use the real file and its directory for both the
    read and the rename.
    """
    real_dir, link_dir = tmp_path / "real", tmp_path / "link"
    real_dir.mkdir(mode=0o700)
    link_dir.mkdir(mode=0o700)
    passphrase = Passphrase("correct horse battery staple orbit")
    real = real_dir / "vault"
    contents = VaultContents({"identity": b"\x01" * 32, "intake-expired": b"\x02" * 96})
    create_vault(real, passphrase, contents, opslimit=MIN_OPSLIMIT, memlimit=MIN_MEMLIMIT)
    link = link_dir / "vault"
    link.symlink_to(real)
    try:
        save_vault(link, passphrase, contents.without("intake-expired"))
    except SafePassageError:
        return  # fixed by refusing symlinks
    if real.exists():
        assert "intake-expired" not in open_vault(real, passphrase), "the destroyed key survives in the real file"


# --- 6. low: OS errors escape the vault reader --------------------------------------------------


def test_vault_path_errors_are_our_errors(tmp_path: Path) -> None:
    """``vault._read_private`` (vault.py:280-284, privatefile.py:29) converts only FileNotFoundError.

    NotADirectoryError, PermissionError, ELOOP (a symlink loop), ENAMETOOLONG
    escape as bare OSError from open_vault/save_vault/vault_cost, past the CLI's
    one error handler. Fix: map ``OSError`` from ``os.open`` to VaultNotFound /
    MalformedInput (naming the errno, never content).
    """
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(SafePassageError):
        open_vault(tmp_path / "file" / "vault", Passphrase("correct horse battery staple orbit"))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(SafePassageError):
        open_vault(loop, Passphrase("correct horse battery staple orbit"))


# --- 7. low: receipts accept non-ASCII digits and impossible dates -----------------------------


@pytest.mark.parametrize(
    "day",
    [
        "\u0662\u0660\u0662\u0666-\u0661\u0661-\u0662\u0668",
        "\uff12\uff10\uff12\uff16-\uff11\uff11-\uff12\uff18",
        "2026-99-99",
    ],
)
def test_receipt_day_is_an_ascii_calendar_date(day: str) -> None:
    """receipt.py:23 uses ``\\d``, which matches any Unicode decimal digit.

    Section 10 says ``"YYYY-MM-DD"``. Arabic-Indic and fullwidth digits, and
    dates such as 2026-99-99, are signed and accepted, so two honest
    implementations (or the server and a JS client) can disagree on whether a
    receipt is valid. Fix: ``[0-9]{4}-[0-9]{2}-[0-9]{2}`` plus
    ``datetime.date.fromisoformat`` round trip.
    """
    with pytest.raises(MalformedInput):
        Receipt.issue(signing_key("receipt"), "c_0123456789", bytes(32), day)


# --- 8. low: a Codename built directly leaks a library exception -------------------------------


def test_codename_constructor_validates_words() -> None:
    """``Codename(words)`` (codename.py:61) accepts anything; derive then raises UnicodeEncodeError.

    The public constructor skips ``parse_codename``'s checks, and
    ``derive_applicant_keys`` does ``.encode("ascii")``: a non-ASCII word raises
    ``UnicodeEncodeError`` whose message quotes a character of the codename and
    whose ``.object`` holds the whole codename. Fix: validate in ``__init__``
    (7 words, each in the list) or make the constructor private.
    """
    with pytest.raises(SafePassageError):
        derive_applicant_keys(Codename(("abacus",) * 6 + ("кошка",)), opslimit=1, memlimit=8 * 1024 * 1024)


# --- 9. intake: attachment metadata in a repr; contacts the sender can seal but nobody can open --


def test_attachment_info_repr_hides_the_applicants_file_name() -> None:
    """``AttachmentInfo`` (intake.py:54) is a dataclass with the default repr.

    Its name, media type and exact size are sealed plaintext ("never visible to
    the server"), but ``repr(contact.attachments)``, a logged AttachmentInfo or
    a traceback shows them. ``Contact.__repr__`` hides them; AttachmentInfo does
    not. Fix: ``repr=False`` and a repr without name, media type or size.
    """
    info = AttachmentInfo("list-of-officers-canary.pdf", "application/pdf", 123457, 1)
    assert "canary" not in repr(info)
    assert "123457" not in repr(info)


def test_contact_the_client_seals_can_be_opened_by_the_handler() -> None:
    """``Contact.seal_payload`` does not check what ``open_payload`` checks.

    ``_check_contact`` (intake.py:164) skips attachment metadata, so a client can
    sign and seal a contact with an attachment name over 255 characters, a
    media type over 127, or ``chunks == 0``; the server stores it and returns a
    receipt (it cannot see inside), and every handler's ``open_payload`` then
    refuses it: the first contact of a would-be defector is silently lost.
    Fix: validate each AttachmentInfo (lengths, ``size >= 0``, ``chunks ==
    attachment_chunk_count(size)``) in ``_check_contact`` / ``__post_init__``,
    so the writer refuses what the reader would refuse (as vault.py does).
    """
    mailbox = signing_key("review-applicant")
    for info in (("x" * 300 + ".pdf", "application/pdf", 10, 1), ("a.pdf", "t" * 128, 10, 1), ("a.pdf", "t", 10, 0)):
        # Fixed: the writer refuses what the reader would refuse, before sealing.
        with pytest.raises(MalformedInput):
            Contact(
                pool="general",
                language="ru",
                message="I want to leave.",
                fields={},
                attachments=(AttachmentInfo(*info),),
                reply_key=hybrid_key("review-applicant-reply").public_key,
                mailbox_key=mailbox.verify_key,
                origin="cli",
            ).seal_payload(mailbox)
