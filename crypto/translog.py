"""The transparency log of directory versions (docs/protocol.md, section 8).

Every directory version is appended to an append-only Merkle log hashed as in
RFC 6962 / RFC 9162 with SHA-256. Admins sign *tree heads* (size, root, time);
clients remember the last head they accepted and take a new one only if the log
proves, with a consistency proof, that the new tree extends the old one. A
server that shows different histories to different applicants (a split view)
must then sign two heads that no proof can join, and the first client that
sees both raises :class:`Fork`; one that shows an older state raises
:class:`Rollback`. Optional independent witnesses co-sign heads they have
themselves checked, so a split view also needs K colluding witnesses.

Proof generation follows RFC 6962 section 2.1.1 (PATH) and 2.1.2 (SUBPROOF);
verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step, so
the code can be read against the RFC. Verification never returns ``False``:
it raises :class:`InvalidProof` when a well-formed proof does not prove the
claim, and :class:`MalformedInput` when the question itself is malformed (a
hash of the wrong length, an index outside the tree, an over-long proof).

The log is only as strong as the pairing of a size with its root: a proof is
checked against a (size, root) pair, and that pair MUST come from one verified
signed tree head, never from two different sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from . import _primitives as P
from . import labels as L
from .encoding import (
    MAX_SAFE_INT,
    JsonObject,
    JsonValue,
    as_obj,
    b64e,
    canonical_json,
    get_bytes,
    get_int,
    get_list,
    get_obj,
    get_str,
    require_keys,
)
from .errors import Fork, InvalidProof, MalformedInput, Rollback, UnsupportedVersion
from .keys import SigningKey
from .threshold import MAX_SIGNERS, KeySet, Signature, signatures_from_json

HASH_LEN: Final = 32
#: A proof longer than this cannot belong to any tree we can name: sizes are
#: capped at 2**53 - 1 (they travel in JSON), which needs at most 54 hashes.
MAX_PROOF_LEN: Final = 64
#: Tree sizes and indices must survive JSON and JavaScript clients unchanged.
MAX_TREE_SIZE: Final = MAX_SAFE_INT
#: RFC 6962: the hash of an empty tree is the hash of the empty string.
EMPTY_ROOT: Final = P.sha256()
#: The ``type`` field of a tree head; a new layout gets a new version suffix.
TREE_HEAD_TYPE: Final = "safepassage/tree-head/v1"
_TREE_HEAD_TYPE_PREFIX: Final = "safepassage/tree-head/"


# --- hashing -------------------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry): the prefix keeps a leaf from passing for an inner node."""
    if not isinstance(entry, bytes):
        raise MalformedInput("log entry must be bytes")
    return P.sha256(L.MERKLE_LEAF_PREFIX, entry)


def _node(left: bytes, right: bytes) -> bytes:
    return P.sha256(L.MERKLE_NODE_PREFIX, left, right)


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_LEN:
        raise MalformedInput(f"{what} must be {HASH_LEN} bytes")
    return value


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise MalformedInput(f"{what} must be an integer in [0, {MAX_TREE_SIZE}]")
    return value


def _check_leaves(leaf_hashes: Sequence[bytes]) -> Sequence[bytes]:
    _check_count(len(leaf_hashes), "tree size")
    for h in leaf_hashes:
        _check_hash(h, "leaf hash")
    return leaf_hashes


def _check_proof(proof: Sequence[bytes]) -> list[bytes]:
    # Bound the length before touching the elements, so a hostile server cannot
    # make a client hash for long.
    if len(proof) > MAX_PROOF_LEN:
        raise MalformedInput(f"a proof has at most {MAX_PROOF_LEN} hashes")
    return [_check_hash(h, "proof hash") for h in proof]


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """RFC 6962 MTH over ``leaves[lo:hi]`` (already leaf hashes)."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return _node(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes (RFC 6962 section 2.1)."""
    leaves = _check_leaves(leaf_hashes)
    return _mth(leaves, 0, len(leaves))


# --- proof generation (RFC 6962 section 2.1.1 and 2.1.2) ---------------------------------


def _path(leaves: Sequence[bytes], index: int, lo: int, hi: int) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if index < lo + k:
        return [*_path(leaves, index, lo, lo + k), _mth(leaves, lo + k, hi)]
    return [*_path(leaves, index, lo + k, hi), _mth(leaves, lo, lo + k)]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]): the sibling hashes from leaf ``index`` up to the root."""
    leaves = _check_leaves(leaf_hashes)
    _check_count(index, "leaf index")
    if index >= len(leaves):
        raise MalformedInput("leaf index must be below the tree size")
    return _path(leaves, index, 0, len(leaves))


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    # ``m`` counts leaves from ``lo``; ``complete`` says whether leaves[lo:lo+m]
    # is the whole old tree, whose root the verifier already holds.
    n = hi - lo
    if m == n:
        return [] if complete else [_mth(leaves, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(leaves, m, lo, lo + k, complete), _mth(leaves, lo + k, hi)]
    return [*_subproof(leaves, m - k, lo + k, hi, False), _mth(leaves, lo, lo + k)]


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]): shows the first ``old_size`` leaves are a prefix of the tree.

    For ``old_size`` 0 or equal to the tree size the proof is empty: every tree
    extends the empty one, and a tree extends itself.
    """
    leaves = _check_leaves(leaf_hashes)
    _check_count(old_size, "old tree size")
    if old_size > len(leaves):
        raise MalformedInput("old tree size must not exceed the tree size")
    if old_size == 0:
        return []
    return _subproof(leaves, old_size, 0, len(leaves), True)


# --- proof verification (RFC 9162 section 2.1.3.2 and 2.1.4.2) ---------------------------


def _shift_to_odd(fn: int, sn: int) -> tuple[int, int]:
    """Right-shift both until LSB(fn) is set or fn is 0 (skips levels with no left sibling)."""
    while fn != 0 and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise unless ``proof`` shows ``leaf_hash`` at ``index`` in the tree (``size``, ``root``).

    ``size`` and ``root`` MUST come from the same verified tree head: the proof
    binds the size only through the shape of the path.
    """
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    path = _check_proof(proof)
    _check_count(size, "tree size")
    _check_count(index, "leaf index")
    if index >= size:  # step 1
        raise MalformedInput("leaf index must be below the tree size")
    fn, sn = index, size - 1  # step 2
    r = leaf_hash  # step 3
    for p in path:  # step 4
        if sn == 0:
            raise InvalidProof("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            fn, sn = _shift_to_odd(fn, sn)
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 5
        raise InvalidProof("inclusion proof is too short")
    # Roots are public values, so a plain comparison leaks nothing.
    if r != root:
        raise InvalidProof("inclusion proof does not lead to the root")


def _check_trivial_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> None:
    # RFC 9162 covers only 0 < old_size < new_size; these are the edges around it.
    if path:
        raise InvalidProof("consistency proof must be empty for this pair of sizes")
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise InvalidProof("the root of an empty tree is SHA-256 of the empty string")
    if old_size == new_size and old_root != new_root:
        raise InvalidProof("two trees of the same size with different roots")


def _fold_consistency(old_size: int, new_size: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 3 to 7 of RFC 9162 section 2.1.4.2: recompute (old root, new root)."""
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise InvalidProof("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            fn, sn = _shift_to_odd(fn, sn)
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise InvalidProof("consistency proof is too short")
    return fr, sr


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Raise unless ``proof`` shows tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    Both pairs MUST come from verified tree heads, for the reason given at
    :func:`verify_inclusion`.
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    path = _check_proof(proof)
    _check_count(old_size, "old tree size")
    _check_count(new_size, "new tree size")
    if old_size > new_size:
        raise MalformedInput("old tree size must not exceed the new tree size")
    if old_size in (0, new_size):
        _check_trivial_consistency(old_size, new_size, old_root, new_root, path)
        return
    if not path:  # step 1
        raise InvalidProof("consistency proof is empty")
    if old_size & (old_size - 1) == 0:  # step 2: the old tree is one complete subtree
        path = [old_root, *path]
    fr, sr = _fold_consistency(old_size, new_size, path)
    if fr != old_root:
        raise InvalidProof("consistency proof does not lead to the old root")
    if sr != new_root:
        raise InvalidProof("consistency proof does not lead to the new root")


# --- an in-memory log ----------------------------------------------------------------


class MerkleLog:
    """Leaf hashes held in memory, with roots and proofs for the current or any earlier size.

    The server persists leaves in its database and rebuilds this from them;
    every call recomputes from the leaves, which is fine for a log that grows by
    one entry per directory version.
    """

    __slots__ = ("_leaves",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._leaves: list[bytes] = []
        for h in leaf_hashes:
            self.append_leaf_hash(h)

    def append(self, entry: bytes) -> int:
        """Append an entry and return its index."""
        return self.append_leaf_hash(leaf_hash(entry))

    def append_leaf_hash(self, value: bytes) -> int:
        """Append an already hashed leaf (when reloading from storage); return its index."""
        _check_hash(value, "leaf hash")
        if len(self._leaves) >= MAX_TREE_SIZE:
            raise MalformedInput("the log is full")
        self._leaves.append(value)
        return len(self._leaves) - 1

    @property
    def size(self) -> int:
        return len(self._leaves)

    def leaf_hashes(self) -> tuple[bytes, ...]:
        return tuple(self._leaves)

    def _prefix(self, size: int | None) -> list[bytes]:
        if size is None:
            return self._leaves
        if _check_count(size, "tree size") > len(self._leaves):
            raise MalformedInput("tree size is larger than the log")
        return self._leaves[:size]

    def root(self, size: int | None = None) -> bytes:
        """The root of the whole log, or of its first ``size`` leaves."""
        return root_hash(self._prefix(size))

    def head(self, timestamp: int, size: int | None = None) -> TreeHead:
        """An unsigned tree head for the log (or its first ``size`` leaves)."""
        leaves = self._prefix(size)
        return TreeHead(len(leaves), root_hash(leaves), timestamp)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self._prefix(size), index)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(self._prefix(new_size), old_size)

    def __repr__(self) -> str:
        return f"MerkleLog(size={self.size})"


# --- tree heads ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A claim that the log had ``size`` entries with Merkle root ``root`` at ``timestamp``.

    ``timestamp`` is seconds since the Unix epoch (UTC). Signatures cover
    :meth:`signed_bytes`, the canonical JSON of :meth:`to_json`.
    """

    size: int
    root: bytes
    timestamp: int

    def __post_init__(self) -> None:
        _check_count(self.size, "tree size")
        _check_hash(self.root, "root hash")
        if (
            isinstance(self.timestamp, bool)
            or not isinstance(self.timestamp, int)
            or not 0 <= self.timestamp <= MAX_SAFE_INT
        ):
            raise MalformedInput("tree head timestamp must be a non-negative integer")
        # An empty tree has exactly one root; any other would be a head of no tree.
        if self.size == 0 and self.root != EMPTY_ROOT:
            raise MalformedInput("an empty tree head must carry the empty-tree root")

    def to_json(self) -> JsonObject:
        return {"type": TREE_HEAD_TYPE, "size": self.size, "root": b64e(self.root), "timestamp": self.timestamp}

    @classmethod
    def from_json(cls, value: JsonValue) -> TreeHead:
        obj = as_obj(value, "tree head")
        kind = get_str(obj, "type", max_len=64)
        if kind != TREE_HEAD_TYPE:
            if kind.startswith(_TREE_HEAD_TYPE_PREFIX):
                raise UnsupportedVersion(f"tree head type {kind!r}")
            raise MalformedInput("not a Safe Passage tree head")
        require_keys(obj, ("type", "size", "root", "timestamp"), "tree head")
        return cls(
            size=get_int(obj, "size", maximum=MAX_TREE_SIZE),
            root=get_bytes(obj, "root", length=HASH_LEN),
            timestamp=get_int(obj, "timestamp"),
        )

    def signed_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def sign_tree_head(head: TreeHead, key: SigningKey) -> Signature:
    """An admin's signature over ``head`` (purpose ``SIG_TREE_HEAD``)."""
    return Signature.make(key, L.SIG_TREE_HEAD, head.signed_bytes())


def cosign_tree_head(head: TreeHead, witness_key: SigningKey) -> Signature:
    """A witness's cosignature over ``head`` (purpose ``SIG_WITNESS``).

    A separate purpose means an admin signature can never count as a witness's,
    even when one person holds both kinds of key. The witness MUST have checked
    ``head`` against the last head it cosigned (:func:`check_extension`) first.
    """
    return Signature.make(witness_key, L.SIG_WITNESS, head.signed_bytes())


def _check_signatures(value: object, what: str) -> tuple[Signature, ...]:
    if not isinstance(value, tuple) or not all(isinstance(s, Signature) for s in value):
        raise MalformedInput(f"{what} must be a tuple of signatures")
    if len(value) > MAX_SIGNERS:
        raise MalformedInput(f"{what}: at most {MAX_SIGNERS}")
    if len({s.key_id for s in value}) != len(value):
        raise MalformedInput("two signatures by the same key")
    return value


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A tree head with admin signatures and (optionally) witness cosignatures."""

    head: TreeHead
    signatures: tuple[Signature, ...]
    witness_signatures: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.head, TreeHead):
            raise MalformedInput("signed tree head needs a tree head")
        _check_signatures(self.signatures, "signatures")
        _check_signatures(self.witness_signatures, "witness signatures")

    def to_json(self) -> JsonObject:
        return {
            "head": self.head.to_json(),
            "signatures": [s.to_json() for s in self.signatures],
            "witness_signatures": [s.to_json() for s in self.witness_signatures],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> SignedTreeHead:
        obj = as_obj(value, "signed tree head")
        require_keys(obj, ("head", "signatures", "witness_signatures"), "signed tree head")
        return cls(
            head=TreeHead.from_json(get_obj(obj, "head")),
            signatures=signatures_from_json(get_list(obj, "signatures")),
            witness_signatures=signatures_from_json(get_list(obj, "witness_signatures")),
        )

    def verify(self, admins: KeySet, witnesses: KeySet | None = None) -> None:
        """Raise :class:`BelowThreshold` unless M admins (and, if given, K witnesses) signed the head.

        Without a pinned witness set the cosignatures are not checked at all:
        they add nothing a client cannot verify.
        """
        message = self.head.signed_bytes()
        admins.verify(L.SIG_TREE_HEAD, message, self.signatures)
        if witnesses is not None:
            witnesses.verify(L.SIG_WITNESS, message, self.witness_signatures)


# --- the client's check --------------------------------------------------------------


def check_extension(previous: TreeHead | None, new: TreeHead, consistency: Sequence[bytes]) -> None:
    """Raise unless ``new`` may replace ``previous`` as the last head this client accepted.

    Both heads MUST already be verified signed heads; this checks only that the
    log's history did not go backwards (:class:`Rollback`) or branch
    (:class:`Fork`). A proof that fails for any reason, malformed or wrong, is a
    Fork: the server has not shown that what this client saw before is a prefix
    of what it shows now, and an honest log always can.
    """
    if previous is None:
        return
    if new.size < previous.size:
        raise Rollback(f"tree size {new.size} after {previous.size}")
    if new.size == previous.size:
        if new.root != previous.root:
            raise Fork(f"two different roots for tree size {new.size}")
        return
    try:
        verify_consistency(previous.size, new.size, previous.root, new.root, consistency)
    except (InvalidProof, MalformedInput) as exc:
        raise Fork(f"tree size {new.size} does not extend tree size {previous.size}") from exc


__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "MAX_PROOF_LEN",
    "MAX_TREE_SIZE",
    "TREE_HEAD_TYPE",
    "leaf_hash",
    "root_hash",
    "inclusion_proof",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
    "MerkleLog",
    "TreeHead",
    "SignedTreeHead",
    "sign_tree_head",
    "cosign_tree_head",
    "check_extension",
]
