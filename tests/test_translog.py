"""Tests for the transparency log (docs/protocol.md, section 8).

Known answers are the RFC 6962 test tree published with the Certificate
Transparency reference implementations (transparency-dev/merkle
``testonly/constants.go`` and ``proof/verify_test.go``, the same data as
google/certificate-transparency-go): eight leaf inputs, the roots for every
size, the complete-subtree hashes, and a few inclusion and consistency proofs.
Everything else uses real hashing and real Ed25519 keys; nothing is mocked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from safepassage.crypto import _primitives as P
from safepassage.crypto import labels as L
from safepassage.crypto.encoding import b64e, canonical_json, parse_canonical_json
from safepassage.crypto.errors import (
    BelowThreshold,
    Fork,
    InvalidProof,
    MalformedInput,
    Rollback,
    UnsupportedVersion,
)
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.threshold import KeySet, Signature
from safepassage.crypto.translog import (
    EMPTY_ROOT,
    MAX_PROOF_LEN,
    MAX_TREE_SIZE,
    MerkleLog,
    SignedTreeHead,
    TreeHead,
    check_extension,
    consistency_proof,
    cosign_tree_head,
    inclusion_proof,
    leaf_hash,
    root_hash,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
)

REJECTED = (InvalidProof, MalformedInput)
TS = 1_767_225_600  # 2026-01-01T00:00:00Z


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- RFC 6962 reference data ----------------------------------------------------------

RFC_LEAVES = [
    h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
RFC_LEAF_HASHES = [leaf_hash(e) for e in RFC_LEAVES]

# Root for each tree size 0..8.
RFC_ROOTS = [
    h(x)
    for x in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]

# Complete-subtree hashes by level (0 = leaves) and position.
RFC_NODES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# (leaf index, tree size, proof); the reference numbers leaves from 1, these from 0.
RFC_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, proof).
RFC_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# --- known answers ----------------------------------------------------------------------


def test_leaf_hashes_match_reference() -> None:
    assert RFC_NODES[0] == RFC_LEAF_HASHES


@pytest.mark.parametrize("size", range(len(RFC_ROOTS)))
def test_roots_match_reference(size: int) -> None:
    assert root_hash(RFC_LEAF_HASHES[:size]) == RFC_ROOTS[size]


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert root_hash([]) == EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_complete_subtrees_match_reference() -> None:
    for level, nodes in enumerate(RFC_NODES):
        width = 1 << level
        for i, node in enumerate(nodes):
            assert root_hash(RFC_LEAF_HASHES[i * width : (i + 1) * width]) == node


@pytest.mark.parametrize(("index", "size", "proof"), RFC_INCLUSION)
def test_inclusion_known_answers(index: int, size: int, proof: list[str]) -> None:
    expected = [h(p) for p in proof]
    assert inclusion_proof(RFC_LEAF_HASHES[:size], index) == expected
    verify_inclusion(RFC_LEAF_HASHES[index], index, size, expected, RFC_ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), RFC_CONSISTENCY)
def test_consistency_known_answers(old: int, new: int, proof: list[str]) -> None:
    expected = [h(p) for p in proof]
    assert consistency_proof(RFC_LEAF_HASHES[:new], old) == expected
    verify_consistency(old, new, RFC_ROOTS[old], RFC_ROOTS[new], expected)


def test_merkle_log_matches_reference() -> None:
    log = MerkleLog()
    assert log.size == 0
    assert log.root() == EMPTY_ROOT
    assert [log.append(e) for e in RFC_LEAVES] == list(range(8))
    assert [log.root(n) for n in range(9)] == RFC_ROOTS
    assert log.head(TS) == TreeHead(8, RFC_ROOTS[8], TS)
    assert log.head(TS, size=3) == TreeHead(3, RFC_ROOTS[3], TS)
    for index, size, proof in RFC_INCLUSION:
        assert log.inclusion_proof(index, size) == [h(p) for p in proof]
    for old, new, proof in RFC_CONSISTENCY:
        assert log.consistency_proof(old, new) == [h(p) for p in proof]
    reloaded = MerkleLog(log.leaf_hashes())
    assert reloaded.root() == log.root()
    assert repr(reloaded) == "MerkleLog(size=8)"


# --- random trees -------------------------------------------------------------------------


@lru_cache(maxsize=64)
def tree(size: int, salt: bytes = b"") -> tuple[bytes, ...]:
    """Leaf hashes of ``size`` distinct entries (distinct, so no leaf sits at two indices)."""
    return tuple(leaf_hash(salt + b"entry-" + i.to_bytes(4, "big")) for i in range(size))


@lru_cache(maxsize=64)
def roots(size: int, salt: bytes = b"") -> tuple[bytes, ...]:
    """The root of every prefix 0..size of ``tree(size, salt)``."""
    leaves = tree(size, salt)
    return tuple(root_hash(leaves[:n]) for n in range(size + 1))


salts = st.binary(max_size=4)
hashes = st.binary(min_size=32, max_size=32)


@settings(max_examples=20, deadline=None)
@given(size=st.integers(1, 200), salt=salts)
def test_every_proof_of_a_random_tree_verifies(size: int, salt: bytes) -> None:
    leaves = tree(size, salt)
    root = root_hash(leaves)
    for index in range(size):
        verify_inclusion(leaves[index], index, size, inclusion_proof(leaves, index), root)
    all_roots = roots(size, salt)
    for old in range(size + 1):
        verify_consistency(old, size, all_roots[old], root, consistency_proof(leaves, old))


def test_every_proof_between_every_pair_of_small_heads_verifies() -> None:
    leaves = tree(33)
    all_roots = roots(33)
    for new in range(34):
        for index in range(new):
            verify_inclusion(leaves[index], index, new, inclusion_proof(leaves[:new], index), all_roots[new])
        for old in range(new + 1):
            verify_consistency(old, new, all_roots[old], all_roots[new], consistency_proof(leaves[:new], old))


def flip_bit(proof: Sequence[bytes], position: int, bit: int) -> list[bytes]:
    out = list(proof)
    changed = bytearray(out[position])
    changed[bit // 8] ^= 1 << (bit % 8)
    out[position] = bytes(changed)
    return out


def _flip(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    return flip_bit(proof, draw(st.integers(0, len(proof) - 1)), draw(st.integers(0, 255)))


def _drop(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    i = draw(st.integers(0, len(proof) - 1))
    return proof[:i] + proof[i + 1 :]


def _truncate(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    return proof[: draw(st.integers(0, len(proof) - 1))]


def _insert(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    i = draw(st.integers(0, len(proof)))
    return proof[:i] + draw(st.lists(hashes, min_size=1, max_size=3)) + proof[i:]


def _swap(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    i, j = draw(st.lists(st.integers(0, len(proof) - 1), min_size=2, max_size=2, unique=True))
    out = list(proof)
    out[i], out[j] = out[j], out[i]
    return out


def _reshape(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    """One element a byte short or long, or a proof past the length limit."""
    if proof and draw(st.booleans()):
        i = draw(st.integers(0, len(proof) - 1))
        out = list(proof)
        out[i] = out[i][:-1] if draw(st.booleans()) else out[i] + b"\x00"
        return out
    return proof + [bytes(32)] * (MAX_PROOF_LEN + 1 - len(proof))


@st.composite
def mutated(draw: st.DrawFn, proof: list[bytes]) -> list[bytes]:
    """One change a server could make to a valid proof."""
    kinds = [_insert, _reshape]
    if proof:
        kinds += [_flip, _drop, _truncate]
    if len(proof) > 1:
        kinds.append(_swap)
    return draw(st.sampled_from(kinds))(draw, proof)


@settings(max_examples=400, deadline=None)
@given(size=st.integers(1, 200), extra=st.integers(0, 40), data=st.data())
def test_damaged_inclusion_proof_is_rejected(size: int, extra: int, data: st.DataObject) -> None:
    leaves = tree(size + extra)
    all_roots = roots(size + extra)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(leaves[:size], index)
    kind = data.draw(st.sampled_from(["proof", "index", "other-head", "leaf", "root"]))
    leaf, claimed_index, claimed_size, root = leaves[index], index, size, all_roots[size]
    if kind == "proof":
        proof = data.draw(mutated(proof))
    elif kind == "index":
        # Another leaf's position, with that leaf's own hash or this one's, or past the end.
        claimed_index = data.draw(st.integers(0, size + 3).filter(lambda i: i != index))
        if claimed_index < size and data.draw(st.booleans()):
            leaf = leaves[claimed_index]
    elif kind == "other-head":
        # A real head of the same log at another size: the proof is for a different tree.
        claimed_size = data.draw(st.integers(0, size + extra).filter(lambda s: s != size))
        root = all_roots[claimed_size]
    elif kind == "leaf":
        leaf = data.draw(hashes.filter(lambda x: x != leaves[index]))
    else:
        root = data.draw(st.sampled_from([EMPTY_ROOT, bytes(32), *all_roots[:size], *all_roots[size + 1 :]]))
        assume(root != all_roots[size])
    with pytest.raises(REJECTED):
        verify_inclusion(leaf, claimed_index, claimed_size, proof, root)


@settings(max_examples=400, deadline=None)
@given(size=st.integers(2, 200), extra=st.integers(0, 40), data=st.data())
def test_damaged_consistency_proof_is_rejected(size: int, extra: int, data: st.DataObject) -> None:
    leaves = tree(size + extra)
    all_roots = roots(size + extra)
    old = data.draw(st.integers(1, size - 1))
    proof = consistency_proof(leaves[:size], old)
    kind = data.draw(st.sampled_from(["proof", "old-head", "new-head", "roots", "empty"]))
    old_size, new_size, old_root, new_root = old, size, all_roots[old], all_roots[size]
    if kind == "proof":
        proof = data.draw(mutated(proof))
    elif kind == "old-head":
        old_size = data.draw(st.integers(0, size + extra).filter(lambda s: s != old))
        old_root = all_roots[old_size]
    elif kind == "new-head":
        new_size = data.draw(st.integers(0, size + extra).filter(lambda s: s != size))
        new_root = all_roots[new_size]
    elif kind == "roots":
        choice = data.draw(st.sampled_from(["swap", "old", "new"]))
        if choice == "swap":
            old_root, new_root = new_root, old_root
        elif choice == "old":
            old_root = data.draw(hashes.filter(lambda x: x != all_roots[old]))
        else:
            new_root = data.draw(hashes.filter(lambda x: x != all_roots[size]))
    else:
        proof = []
    with pytest.raises(REJECTED):
        verify_consistency(old_size, new_size, old_root, new_root, proof)


def test_size_is_bound_only_through_the_signed_head() -> None:
    """Why section 8 says size and root MUST come from one verified head.

    RFC 9162 verification binds the tree size only through the shape of the
    path. Leaf 0 has the same path shape in trees of 3 and 4 leaves, so the
    proof for size 3 also "verifies" for the false pair (size 4, root of size 3).
    A signed head never pairs them that way, which is what makes this harmless.
    """
    leaves = tree(4)
    proof = inclusion_proof(leaves[:3], 0)
    verify_inclusion(leaves[0], 0, 4, proof, root_hash(leaves[:3]))
    with pytest.raises(InvalidProof):
        verify_inclusion(leaves[0], 0, 4, proof, root_hash(leaves))
    consistency = consistency_proof(leaves[:3], 1)
    verify_consistency(1, 4, root_hash(leaves[:1]), root_hash(leaves[:3]), consistency)
    with pytest.raises(InvalidProof):
        verify_consistency(1, 4, root_hash(leaves[:1]), root_hash(leaves), consistency)


def test_rfc_length_checks_reject_a_size_the_proof_does_not_fit() -> None:
    """RFC 9162's ``sn`` checks catch a proof claimed for a size whose path is longer or shorter.

    Each call below would reach the right root if the verifier skipped those
    checks: the proof is genuine for 4 leaves, only the claimed size is false.
    """
    leaves = tree(4)
    root1, root4 = root_hash(leaves[:1]), root_hash(leaves)
    inclusion = inclusion_proof(leaves, 0)
    with pytest.raises(InvalidProof, match="too short"):
        verify_inclusion(leaves[0], 0, 8, inclusion, root4)
    with pytest.raises(InvalidProof, match="too long"):
        verify_inclusion(leaves[0], 0, 2, inclusion, root4)
    consistency = consistency_proof(leaves, 1)
    with pytest.raises(InvalidProof, match="too short"):
        verify_consistency(1, 8, root1, root4, consistency)
    with pytest.raises(InvalidProof, match="too long"):
        verify_consistency(1, 2, root1, root4, consistency)


# --- edges of verification -------------------------------------------------------------------


def test_single_leaf_tree() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(leaf, 0, 1, [], leaf)
    with pytest.raises(InvalidProof):
        verify_inclusion(leaf, 0, 1, [], EMPTY_ROOT)
    with pytest.raises(MalformedInput):
        verify_inclusion(b"", 0, 1, [], leaf)
    with pytest.raises(MalformedInput):
        verify_inclusion(leaf, 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1), (0, -1), (0, MAX_TREE_SIZE + 1)])
def test_inclusion_index_outside_tree_is_malformed(index: int, size: int) -> None:
    with pytest.raises(MalformedInput):
        verify_inclusion(leaf_hash(b"x"), index, size, [], EMPTY_ROOT)


@pytest.mark.parametrize("bad", [True, 1.0, "1", None])
def test_sizes_must_be_plain_integers(bad: object) -> None:
    with pytest.raises(MalformedInput):
        verify_inclusion(leaf_hash(b"x"), bad, 2, [], EMPTY_ROOT)  # type: ignore[arg-type]
    with pytest.raises(MalformedInput):
        verify_consistency(0, bad, EMPTY_ROOT, EMPTY_ROOT, [])  # type: ignore[arg-type]


def test_empty_tree_is_consistent_with_every_tree() -> None:
    leaves = tree(5)
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, root_hash(leaves), [])
    with pytest.raises(InvalidProof):
        verify_consistency(0, 5, EMPTY_ROOT, root_hash(leaves), [EMPTY_ROOT])
    with pytest.raises(InvalidProof):
        verify_consistency(0, 5, bytes(32), root_hash(leaves), [])


def test_equal_sizes_need_equal_roots_and_no_proof() -> None:
    root = root_hash(tree(5))
    verify_consistency(5, 5, root, root, [])
    with pytest.raises(InvalidProof):
        verify_consistency(5, 5, root, EMPTY_ROOT, [])
    with pytest.raises(InvalidProof):
        verify_consistency(5, 5, root, root, [root])


def test_consistency_backwards_is_malformed() -> None:
    leaves = tree(5)
    with pytest.raises(MalformedInput):
        verify_consistency(5, 3, root_hash(leaves), root_hash(leaves[:3]), consistency_proof(leaves, 3))


def test_nontrivial_consistency_needs_a_proof() -> None:
    leaves = tree(4)
    with pytest.raises(InvalidProof):
        verify_consistency(2, 4, root_hash(leaves[:2]), root_hash(leaves), [])


def test_proof_length_is_bounded() -> None:
    long_proof = [bytes(32)] * (MAX_PROOF_LEN + 1)
    with pytest.raises(MalformedInput):
        verify_inclusion(leaf_hash(b"x"), 0, 2, long_proof, EMPTY_ROOT)
    with pytest.raises(MalformedInput):
        verify_consistency(1, 2, EMPTY_ROOT, EMPTY_ROOT, long_proof)


@pytest.mark.parametrize("element", [b"", bytes(31), bytes(33), "0" * 32, 7])
def test_proof_elements_must_be_32_bytes(element: object) -> None:
    leaves = tree(2)
    with pytest.raises(MalformedInput):
        verify_inclusion(leaves[0], 0, 2, [element], root_hash(leaves))  # type: ignore[list-item]
    with pytest.raises(MalformedInput):
        verify_consistency(1, 2, root_hash(leaves[:1]), root_hash(leaves), [element])  # type: ignore[list-item]


def test_generation_rejects_bad_arguments() -> None:
    leaves = list(tree(4))
    with pytest.raises(MalformedInput):
        inclusion_proof(leaves, 4)
    with pytest.raises(MalformedInput):
        inclusion_proof([], 0)
    with pytest.raises(MalformedInput):
        consistency_proof(leaves, 5)
    with pytest.raises(MalformedInput):
        root_hash([*leaves, b"short"])
    with pytest.raises(MalformedInput):
        leaf_hash("text")  # type: ignore[arg-type]
    assert consistency_proof(leaves, 0) == []
    assert consistency_proof(leaves, 4) == []


def test_merkle_log_rejects_bad_arguments() -> None:
    log = MerkleLog(tree(3))
    with pytest.raises(MalformedInput):
        log.root(4)
    with pytest.raises(MalformedInput):
        log.inclusion_proof(0, size=4)
    with pytest.raises(MalformedInput):
        log.append_leaf_hash(b"short")
    with pytest.raises(MalformedInput):
        MerkleLog([b"short"])
    assert log.size == 3


# --- tree heads: format ------------------------------------------------------------------------


def test_tree_head_bytes_are_pinned() -> None:
    head = TreeHead(8, RFC_ROOTS[8], TS)
    assert head.signed_bytes() == (
        b'{"root":"XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz-Nw7_RgQyg","size":8,'
        b'"timestamp":1767225600,"type":"safepassage/tree-head/v1"}'
    )
    assert TreeHead.from_json(parse_canonical_json(head.signed_bytes(), max_len=1024)) == head


def valid_head_json() -> dict[str, object]:
    return {"type": "safepassage/tree-head/v1", "size": 8, "root": b64e(RFC_ROOTS[8]), "timestamp": TS}


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"size": -1},
        {"size": True},
        {"size": "8"},
        {"size": MAX_TREE_SIZE + 1},
        {"timestamp": -1},
        {"timestamp": None},
        {"root": b64e(RFC_ROOTS[8][:31])},
        {"root": b64e(RFC_ROOTS[8]) + "="},
        {"root": RFC_ROOTS[8].hex()},
        {"type": "safepassage/directory/v1"},
        {"type": 1},
        {"size": 0},  # an empty tree with a non-empty root
    ],
)
def test_tree_head_rejects_malformed_json(change: dict[str, object]) -> None:
    value = valid_head_json() | change
    with pytest.raises(MalformedInput):
        TreeHead.from_json(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["type", "size", "root", "timestamp"])
def test_tree_head_rejects_missing_field(field: str) -> None:
    value = valid_head_json()
    del value[field]
    with pytest.raises(MalformedInput):
        TreeHead.from_json(value)  # type: ignore[arg-type]


def test_tree_head_of_a_later_version_is_unsupported() -> None:
    value = valid_head_json() | {"type": "safepassage/tree-head/v2", "extra": 1}
    with pytest.raises(UnsupportedVersion):
        TreeHead.from_json(value)  # type: ignore[arg-type]


def test_tree_head_constructor_checks_fields() -> None:
    with pytest.raises(MalformedInput):
        TreeHead(0, bytes(32), TS)
    with pytest.raises(MalformedInput):
        TreeHead(1, bytes(31), TS)
    with pytest.raises(MalformedInput):
        TreeHead(1, bytes(32), -5)
    assert TreeHead(0, EMPTY_ROOT, 0).size == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300)
@given(value=json_values)
def test_tree_head_parser_raises_only_malformed_input(value: object) -> None:
    with contextlib.suppress(MalformedInput):
        TreeHead.from_json(value)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(field=st.sampled_from(["type", "size", "root", "timestamp", "other"]), replacement=json_values)
def test_tree_head_parser_on_one_damaged_field(field: str, replacement: object) -> None:
    value = valid_head_json() | {field: replacement}
    try:
        head = TreeHead.from_json(value)  # type: ignore[arg-type]
    except MalformedInput:
        return
    # Whatever it accepted, it must re-encode to exactly what it read.
    assert head.to_json() == value


@settings(max_examples=200)
@given(value=json_values)
def test_signed_tree_head_parser_raises_only_malformed_input(value: object) -> None:
    for candidate in (value, {"head": valid_head_json(), "signatures": value, "witness_signatures": []}):
        with contextlib.suppress(MalformedInput):
            SignedTreeHead.from_json(candidate)  # type: ignore[arg-type]


# --- tree heads: signatures ----------------------------------------------------------------------


def keys(tag: int, n: int) -> list[SigningKey]:
    return [SigningKey.from_seed_bytes(bytes([tag, i]) * 16) for i in range(n)]


def keyset(members: Sequence[SigningKey], threshold: int) -> KeySet:
    return KeySet(tuple(k.verify_key for k in members), threshold)


ADMINS = keys(1, 3)
WITNESSES = keys(2, 3)
OUTSIDER = keys(3, 1)[0]
ADMIN_SET = keyset(ADMINS, 2)
WITNESS_SET = keyset(WITNESSES, 2)
HEAD = TreeHead(8, RFC_ROOTS[8], TS)


def signed(head: TreeHead, admins: Sequence[SigningKey], witnesses: Sequence[SigningKey] = ()) -> SignedTreeHead:
    return SignedTreeHead(
        head,
        tuple(sign_tree_head(head, k) for k in admins),
        tuple(cosign_tree_head(head, w) for w in witnesses),
    )


def test_signature_covers_labelled_canonical_bytes() -> None:
    sig = sign_tree_head(HEAD, ADMINS[0])
    assert sig.key_id == ADMINS[0].verify_key.key_id
    message = b"safepassage/v1/sig/tree-head\x00" + HEAD.signed_bytes()
    P.ed25519_verify(ADMINS[0].verify_key.public_bytes_raw(), message, sig.signature)
    cosig = cosign_tree_head(HEAD, WITNESSES[0])
    message = b"safepassage/v1/sig/witness-cosign\x00" + HEAD.signed_bytes()
    P.ed25519_verify(WITNESSES[0].verify_key.public_bytes_raw(), message, cosig.signature)
    assert L.SIG_TREE_HEAD == b"tree-head"
    assert L.SIG_WITNESS == b"witness-cosign"


@pytest.mark.parametrize(("m", "n"), [(1, 1), (2, 3), (3, 5), (5, 5)])
def test_admin_threshold_edges(m: int, n: int) -> None:
    members = keys(4, n)
    admins = keyset(members, m)
    signed(HEAD, members[:m]).verify(admins)
    signed(HEAD, members).verify(admins)
    with pytest.raises(BelowThreshold):
        signed(HEAD, members[: m - 1]).verify(admins)


def test_non_member_signature_is_not_counted() -> None:
    with pytest.raises(BelowThreshold):
        signed(HEAD, [ADMINS[0], OUTSIDER]).verify(ADMIN_SET)


def test_signature_over_another_head_is_not_counted() -> None:
    other = TreeHead(HEAD.size, HEAD.root, HEAD.timestamp + 1)
    sigs = (sign_tree_head(HEAD, ADMINS[0]), sign_tree_head(other, ADMINS[1]))
    with pytest.raises(BelowThreshold):
        SignedTreeHead(HEAD, sigs).verify(ADMIN_SET)


def test_witness_cosignature_never_counts_as_admin_signature() -> None:
    # The same key signing with the witness purpose does not make an admin signature.
    sigs = (sign_tree_head(HEAD, ADMINS[0]), cosign_tree_head(HEAD, ADMINS[1]))
    with pytest.raises(BelowThreshold):
        SignedTreeHead(HEAD, sigs).verify(ADMIN_SET)


def test_garbage_signature_does_not_veto() -> None:
    garbage = Signature(ADMINS[2].verify_key.key_id, bytes(64))
    sth = SignedTreeHead(HEAD, (*signed(HEAD, ADMINS[:2]).signatures, garbage))
    sth.verify(ADMIN_SET)


def test_duplicate_signer_is_malformed() -> None:
    sig = sign_tree_head(HEAD, ADMINS[0])
    with pytest.raises(MalformedInput):
        SignedTreeHead(HEAD, (sig, sig))
    with pytest.raises(MalformedInput):
        SignedTreeHead(HEAD, (sig,), (cosign_tree_head(HEAD, WITNESSES[0]),) * 2)
    value = signed(HEAD, ADMINS[:2]).to_json()
    value["signatures"] = [sig.to_json(), sig.to_json()]
    with pytest.raises(MalformedInput):
        SignedTreeHead.from_json(value)


def test_witness_threshold() -> None:
    signed(HEAD, ADMINS[:2], WITNESSES[:2]).verify(ADMIN_SET, WITNESS_SET)
    signed(HEAD, ADMINS[:2], WITNESSES).verify(ADMIN_SET, WITNESS_SET)
    with pytest.raises(BelowThreshold):
        signed(HEAD, ADMINS[:2], WITNESSES[:1]).verify(ADMIN_SET, WITNESS_SET)
    with pytest.raises(BelowThreshold):
        signed(HEAD, ADMINS[:2], [WITNESSES[0], OUTSIDER]).verify(ADMIN_SET, WITNESS_SET)
    with pytest.raises(BelowThreshold):
        signed(HEAD, ADMINS[:1], WITNESSES).verify(ADMIN_SET, WITNESS_SET)
    # Admin-purpose signatures by witness keys are not cosignatures.
    wrong_purpose = tuple(sign_tree_head(HEAD, w) for w in WITNESSES)
    with pytest.raises(BelowThreshold):
        SignedTreeHead(HEAD, signed(HEAD, ADMINS[:2]).signatures, wrong_purpose).verify(ADMIN_SET, WITNESS_SET)


def test_witnesses_are_ignored_when_none_are_pinned() -> None:
    signed(HEAD, ADMINS[:2]).verify(ADMIN_SET)
    signed(HEAD, ADMINS[:2], [OUTSIDER]).verify(ADMIN_SET)


def test_signed_tree_head_json_round_trip() -> None:
    sth = signed(HEAD, ADMINS[:2], WITNESSES[:2])
    data = canonical_json(sth.to_json())
    again = SignedTreeHead.from_json(parse_canonical_json(data, max_len=4096))
    assert again == sth
    again.verify(ADMIN_SET, WITNESS_SET)


@pytest.mark.parametrize("field", ["head", "signatures", "witness_signatures"])
def test_signed_tree_head_requires_exact_fields(field: str) -> None:
    value = signed(HEAD, ADMINS[:2]).to_json()
    del value[field]
    with pytest.raises(MalformedInput):
        SignedTreeHead.from_json(value)
    value = signed(HEAD, ADMINS[:2]).to_json() | {"extra": []}
    with pytest.raises(MalformedInput):
        SignedTreeHead.from_json(value)


# --- check_extension --------------------------------------------------------------------------------


def head_of(leaves: Sequence[bytes], ts: int = TS) -> TreeHead:
    return TreeHead(len(leaves), root_hash(leaves), ts)


def test_first_head_is_accepted() -> None:
    check_extension(None, head_of(tree(5)), [])


def test_same_head_is_accepted_even_if_re_signed_later() -> None:
    leaves = tree(5)
    check_extension(head_of(leaves), head_of(leaves, TS + 3600), [])


def test_extension_with_valid_proof_is_accepted() -> None:
    leaves = tree(9)
    check_extension(head_of(leaves[:4]), head_of(leaves), consistency_proof(leaves, 4))
    check_extension(head_of(leaves[:0]), head_of(leaves), [])


def test_smaller_head_is_rollback() -> None:
    leaves = tree(9)
    with pytest.raises(Rollback):
        check_extension(head_of(leaves), head_of(leaves[:4]), consistency_proof(leaves, 4))


def test_same_size_different_root_is_fork() -> None:
    with pytest.raises(Fork):
        check_extension(head_of(tree(5, b"a")), head_of(tree(5, b"b")), [])


def test_bad_proof_is_fork_with_the_reason_as_cause() -> None:
    leaves = tree(9)
    proof = consistency_proof(leaves, 4)
    with pytest.raises(Fork) as caught:
        check_extension(head_of(leaves[:4]), head_of(leaves), flip_bit(proof, 0, 0))
    assert isinstance(caught.value.__cause__, InvalidProof)
    with pytest.raises(Fork) as caught:
        check_extension(head_of(leaves[:4]), head_of(leaves), [b"short"])
    assert isinstance(caught.value.__cause__, MalformedInput)


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.integers(0, 12), min_size=1, max_size=12))
def test_client_following_an_honest_log_accepts_every_head(steps: list[int]) -> None:
    log = MerkleLog()
    seen: TreeHead | None = None
    for i, grow in enumerate(steps):
        for j in range(grow):
            log.append(f"directory {i}.{j}".encode())
        new = log.head(TS + i)
        proof = log.consistency_proof(seen.size) if seen is not None else []
        check_extension(seen, new, proof)
        seen = new


# --- split view -----------------------------------------------------------------------------------------


def forked_logs(shared: int, a_extra: int, b_extra: int) -> tuple[MerkleLog, MerkleLog]:
    """Two logs that agree on their first ``shared`` entries and then diverge."""
    prefix = [f"directory v{i}".encode() for i in range(shared)]
    log_a = MerkleLog(leaf_hash(e) for e in prefix)
    log_b = MerkleLog(leaf_hash(e) for e in prefix)
    for i in range(a_extra):
        log_a.append(f"directory v{shared + i} for A".encode())
    for i in range(b_extra):
        log_b.append(f"directory v{shared + i} for B".encode())
    return log_a, log_b


def server_offers(logs: Sequence[MerkleLog], random_proofs: Sequence[list[bytes]]) -> list[list[bytes]]:
    """Every consistency proof the server can compute from either log, plus arbitrary ones."""
    offers: list[list[bytes]] = [[]]
    for log in logs:
        for new in range(log.size + 1):
            offers += [log.consistency_proof(old, new) for old in range(new + 1)]
    return offers + list(random_proofs)


def rejection(mine: TreeHead, other: TreeHead) -> type[Exception]:
    """A client that accepted ``mine`` must refuse ``other``: Fork, or Rollback if it is smaller."""
    return Rollback if other.size < mine.size else Fork


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shared=st.integers(0, 12),
    a_extra=st.integers(1, 10),
    b_extra=st.integers(1, 10),
    random_proofs=st.lists(st.lists(hashes, max_size=8), max_size=4),
)
def test_split_view_is_caught_whatever_proof_the_server_offers(
    shared: int, a_extra: int, b_extra: int, random_proofs: list[list[bytes]]
) -> None:
    log_a, log_b = forked_logs(shared, a_extra, b_extra)
    # The heads are properly signed: signatures alone cannot stop a split view.
    sth_a, sth_b = signed(log_a.head(TS), ADMINS[:2]), signed(log_b.head(TS), ADMINS[:2])
    sth_a.verify(ADMIN_SET)
    sth_b.verify(ADMIN_SET)
    offers = server_offers([log_a, log_b], random_proofs)
    for mine, other in ((sth_a.head, sth_b.head), (sth_b.head, sth_a.head)):
        for proof in offers:
            with pytest.raises(rejection(mine, other)):
                check_extension(mine, other, proof)


def test_split_view_of_equal_size_is_a_fork_for_both_clients() -> None:
    log_a, log_b = forked_logs(5, 3, 3)
    head_a, head_b = log_a.head(TS), log_b.head(TS)
    for mine, other in ((head_a, head_b), (head_b, head_a)):
        for proof in server_offers([log_a, log_b], []):
            with pytest.raises(Fork):
                check_extension(mine, other, proof)


def test_fork_is_caught_as_the_logs_keep_growing() -> None:
    """Client A stays on branch A, then is shown branch B as it grows past A's size."""
    log_a, log_b = forked_logs(4, 2, 0)
    client_a = log_a.head(TS)
    client_b: TreeHead | None = None
    for step in range(12):
        log_b.append(f"directory for B, step {step}".encode())
        head_b = log_b.head(TS + step)
        check_extension(client_b, head_b, log_b.consistency_proof(client_b.size) if client_b else [])
        client_b = head_b
        with pytest.raises(rejection(client_a, head_b)):
            check_extension(client_a, head_b, log_b.consistency_proof(min(client_a.size, log_b.size)))
        with pytest.raises(rejection(client_b, client_a)):
            check_extension(client_b, client_a, log_a.consistency_proof(min(client_b.size, log_a.size)))
    # Both clients can still follow their own branch.
    log_a.append(b"next on A")
    check_extension(client_a, log_a.head(TS), log_a.consistency_proof(client_a.size))


def test_client_at_the_shared_prefix_accepts_one_branch_then_rejects_the_other() -> None:
    log_a, log_b = forked_logs(6, 4, 4)
    client = log_a.head(TS, size=6)
    check_extension(client, log_b.head(TS), log_b.consistency_proof(6))
    client = log_b.head(TS)
    for proof in server_offers([log_a, log_b], []):
        with pytest.raises(Fork):
            check_extension(client, log_a.head(TS), proof)
