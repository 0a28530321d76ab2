"""The local key vault (docs/protocol.md, section 11): real Argon2id, real files, no mocks.

Every vault here uses the floor cost (2 passes, 64 MiB) so the suite stays quick;
the default cost is the same code path with bigger numbers.
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safepassage.crypto import _primitives as P
from safepassage.crypto import labels as L
from safepassage.crypto.encoding import b64e, canonical_json
from safepassage.crypto.errors import (
    InsecureFile,
    MalformedInput,
    SafePassageError,
    UnsupportedVersion,
    WeakPassphrase,
    WrongPassphrase,
)
from safepassage.crypto.vault import (
    HEADER_LEN,
    MIN_MEMLIMIT,
    MIN_OPSLIMIT,
    NoSuchEntry,
    Passphrase,
    VaultContents,
    VaultExists,
    VaultNotFound,
    change_passphrase,
    create_vault,
    open_vault,
    save_vault,
    vault_cost,
)

FAST = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}
PASSPHRASE = Passphrase("correct horse battery staple orbit")
OTHER = Passphrase("correct horse battery staple orbiT")
CANARY = b"CANARY-7f3a9c-do-not-leak"
CANARY_TEXTS = (CANARY.decode(), CANARY.hex(), b64e(CANARY))


def _contents() -> VaultContents:
    return VaultContents({"handler.identity": CANARY, "intake-2026-01": bytes(range(96)), "empty": b""})


def _assert_no_secret(text: str) -> None:
    for secret in (*CANARY_TEXTS, PASSPHRASE, OTHER):
        assert secret not in text


def _assert_clean_error(exc: BaseException) -> None:
    assert isinstance(exc, SafePassageError)
    for text in (str(exc), repr(exc), exc.message, exc.detail, exc.hint, *map(str, exc.args)):
        _assert_no_secret(text)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of one floor-cost vault, made once for the mutation tests."""
    path = tmp_path_factory.mktemp("sealed") / "vault"
    create_vault(path, PASSPHRASE, _contents(), **FAST)
    return path.read_bytes()


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    create_vault(path, PASSPHRASE, _contents(), **FAST)
    return path


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- an independent reading of the spec -----------------------------------------------------


def _spec_key(passphrase: str, salt: bytes, ops: int, mem: int) -> bytes:
    secret = P.argon2id(unicodedata.normalize("NFC", passphrase).encode(), salt, opslimit=ops, memlimit=mem, length=32)
    return P.hkdf_sha256(secret, salt=b"", info=L.VAULT_KEY, length=32)


def _spec_seal(passphrase: str, payload: bytes, ops: int = MIN_OPSLIMIT, mem: int = MIN_MEMLIMIT) -> bytes:
    salt, nonce = bytes(range(16)), bytes(range(100, 124))
    header = L.VAULT_MAGIC + ops.to_bytes(4, "big") + mem.to_bytes(4, "big") + salt + nonce
    return header + P.aead_seal(_spec_key(passphrase, salt, ops, mem), nonce, payload, header)


def test_file_layout_matches_the_spec(vault: Path) -> None:
    data = vault.read_bytes()
    assert data[:4] == b"SPV\x01"
    ops, mem = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    assert (ops, mem) == (2, 64 * 1024 * 1024)
    salt, nonce = data[12:28], data[28:52]
    assert HEADER_LEN == 52
    payload = P.aead_open(_spec_key(PASSPHRASE, salt, ops, mem), nonce, data[52:], data[:52])
    doc = json.loads(payload)
    assert canonical_json(doc) == payload
    assert doc == {
        "type": "safepassage/vault/v1",
        "entries": {"empty": "", "handler.identity": b64e(CANARY), "intake-2026-01": b64e(bytes(range(96)))},
    }


def test_opens_a_vault_written_from_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "v"
    payload = canonical_json({"type": "safepassage/vault/v1", "entries": {"k": b64e(b"\x00\xff")}})
    _write(path, _spec_seal(PASSPHRASE, payload))
    assert open_vault(path, PASSPHRASE).get("k") == b"\x00\xff"


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"type": "safepassage/vault/v2", "entries": {}}, UnsupportedVersion),
        ({"type": "safepassage/vault/v1", "entries": {}, "extra": 1}, MalformedInput),
        ({"type": "safepassage/vault/v1"}, MalformedInput),
        ({"type": "safepassage/vault/v1", "entries": {"Bad": ""}}, MalformedInput),
        ({"type": "safepassage/vault/v1", "entries": {"k": 5}}, MalformedInput),
        ({"type": "safepassage/vault/v1", "entries": {"k": "a="}}, MalformedInput),
        ({"type": "safepassage/vault/v1", "entries": []}, MalformedInput),
    ],
)
def test_authentic_but_invalid_payload_is_refused(tmp_path: Path, doc: object, error: type[Exception]) -> None:
    path = tmp_path / "v"
    _write(path, _spec_seal(PASSPHRASE, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()))
    with pytest.raises(error):
        open_vault(path, PASSPHRASE)


def test_non_canonical_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v"
    _write(path, _spec_seal(PASSPHRASE, b'{"type": "safepassage/vault/v1", "entries": {}}'))
    with pytest.raises(MalformedInput):
        open_vault(path, PASSPHRASE)


# --- round trips ---------------------------------------------------------------------------


def test_round_trip(vault: Path) -> None:
    opened = open_vault(vault, PASSPHRASE)
    assert opened == _contents()
    assert opened.get("handler.identity") == CANARY
    assert opened.names() == ("empty", "handler.identity", "intake-2026-01")
    assert vault_cost(vault) == (MIN_OPSLIMIT, MIN_MEMLIMIT)


def test_empty_vault_round_trip(tmp_path: Path) -> None:
    create_vault(tmp_path / "v", PASSPHRASE, VaultContents.empty(), **FAST)
    assert len(open_vault(tmp_path / "v", PASSPHRASE)) == 0


def test_passphrase_is_nfc_normalised(tmp_path: Path) -> None:
    composed = Passphrase("caf\u00e9 au lait, s'il vous pla\u00eet")
    decomposed = Passphrase(unicodedata.normalize("NFD", composed))
    assert decomposed != composed
    create_vault(tmp_path / "v", composed, _contents(), **FAST)
    assert open_vault(tmp_path / "v", decomposed) == _contents()


def test_save_replaces_contents_and_keeps_cost(vault: Path) -> None:
    before = vault.read_bytes()
    inode = vault.stat().st_ino
    new = _contents().with_entry("admin.signing", b"\x01" * 32).without("empty")
    save_vault(vault, PASSPHRASE, new)
    assert open_vault(vault, PASSPHRASE) == new
    assert vault_cost(vault) == (MIN_OPSLIMIT, MIN_MEMLIMIT)
    after = vault.read_bytes()
    assert after[12:28] != before[12:28]  # fresh salt
    assert after[28:52] != before[28:52]  # fresh nonce
    assert vault.stat().st_ino != inode  # a new file renamed over the old, not rewritten in place


def test_save_same_contents_gives_different_bytes(vault: Path) -> None:
    before = vault.read_bytes()
    save_vault(vault, PASSPHRASE, _contents())
    assert vault.read_bytes() != before
    assert open_vault(vault, PASSPHRASE) == _contents()


def test_save_can_change_cost(vault: Path) -> None:
    save_vault(vault, PASSPHRASE, _contents(), opslimit=3)
    assert vault_cost(vault) == (3, MIN_MEMLIMIT)
    assert open_vault(vault, PASSPHRASE) == _contents()


def test_save_with_wrong_passphrase_changes_nothing(vault: Path) -> None:
    before = vault.read_bytes()
    with pytest.raises(WrongPassphrase):
        save_vault(vault, OTHER, VaultContents.empty())
    assert vault.read_bytes() == before


def test_change_passphrase(vault: Path) -> None:
    change_passphrase(vault, PASSPHRASE, OTHER)
    assert open_vault(vault, OTHER) == _contents()
    with pytest.raises(WrongPassphrase):
        open_vault(vault, PASSPHRASE)
    with pytest.raises(WeakPassphrase):
        change_passphrase(vault, OTHER, Passphrase("short"))
    assert open_vault(vault, OTHER) == _contents()


# --- refusals ------------------------------------------------------------------------------


def test_wrong_passphrase(vault: Path) -> None:
    with pytest.raises(WrongPassphrase) as info:
        open_vault(vault, OTHER)
    _assert_clean_error(info.value)


@pytest.mark.parametrize("passphrase", ["", "x" * 19, "e\u0301" * 10])
def test_weak_passphrase_refused_on_create(tmp_path: Path, passphrase: str) -> None:
    # "e" + combining acute is 20 code points but 10 characters after NFC.
    with pytest.raises(WeakPassphrase):
        create_vault(tmp_path / "v", Passphrase(passphrase), _contents(), **FAST)
    assert list(tmp_path.iterdir()) == []


def test_twenty_characters_is_enough(tmp_path: Path) -> None:
    create_vault(tmp_path / "v", Passphrase("x" * 20), _contents(), **FAST)


def test_create_refuses_to_overwrite(vault: Path) -> None:
    before = vault.read_bytes()
    with pytest.raises(VaultExists):
        create_vault(vault, PASSPHRASE, VaultContents.empty(), **FAST)
    assert vault.read_bytes() == before
    assert [p.name for p in vault.parent.iterdir()] == ["vault"]


def test_create_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "v").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VaultExists):
        create_vault(tmp_path / "v", PASSPHRASE, _contents(), **FAST)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(("opslimit", "memlimit"), [(1, MIN_MEMLIMIT), (11, MIN_MEMLIMIT), (2, MIN_MEMLIMIT - 1)])
def test_create_refuses_cost_outside_bounds(tmp_path: Path, opslimit: int, memlimit: int) -> None:
    with pytest.raises(MalformedInput):
        create_vault(tmp_path / "v", PASSPHRASE, _contents(), opslimit=opslimit, memlimit=memlimit)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VaultNotFound):
        open_vault(tmp_path / "nope", PASSPHRASE)
    with pytest.raises(VaultNotFound):
        save_vault(tmp_path / "nope", PASSPHRASE, _contents())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601])
def test_group_or_other_access_refused(vault: Path, mode: int) -> None:
    os.chmod(vault, mode)
    with pytest.raises(InsecureFile) as info:
        open_vault(vault, PASSPHRASE)
    assert f"{mode:04o}" in str(info.value)
    with pytest.raises(InsecureFile):
        save_vault(vault, PASSPHRASE, _contents())


def test_owner_only_modes_accepted(vault: Path) -> None:
    os.chmod(vault, 0o400)
    assert open_vault(vault, PASSPHRASE) == _contents()


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(MalformedInput):
        open_vault(tmp_path / "fifo", PASSPHRASE)


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(MalformedInput):
        open_vault(tmp_path / "d", PASSPHRASE)


# --- atomic, private writes ----------------------------------------------------------------


def test_files_are_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "v"
    create_vault(path, PASSPHRASE, _contents(), **FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    save_vault(path, PASSPHRASE, VaultContents.empty())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    change_passphrase(path, PASSPHRASE, OTHER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_writes_leave_no_temporary_files(vault: Path) -> None:
    save_vault(vault, PASSPHRASE, VaultContents.empty())
    change_passphrase(vault, PASSPHRASE, OTHER)
    with pytest.raises(WrongPassphrase):
        save_vault(vault, PASSPHRASE, _contents())
    with pytest.raises(VaultExists):
        create_vault(vault, OTHER, _contents(), **FAST)
    assert [p.name for p in vault.parent.iterdir()] == ["vault"]


# --- every altered byte fails, and only with our errors ----------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_refused(tmp_path: Path, sealed: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(sealed) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    altered = bytearray(sealed)
    altered[position] ^= mask
    path = tmp_path / "altered"
    _write(path, bytes(altered))
    with pytest.raises((WrongPassphrase, MalformedInput)) as info:
        open_vault(path, PASSPHRASE)
    _assert_clean_error(info.value)
    if position >= 12:
        # Past the cost fields, every change reaches the tag.
        assert isinstance(info.value, WrongPassphrase)


@pytest.mark.parametrize(
    ("position", "value", "error"),
    [
        (3, 0x02, UnsupportedVersion),  # version byte of the magic
        (0, ord("X"), MalformedInput),
        (7, 0x01, MalformedInput),  # opslimit 1: below the floor
        (7, 0x0B, MalformedInput),  # opslimit 11: above the ceiling
        (4, 0x01, MalformedInput),  # opslimit 2^24 + 2
        (8, 0x03, MalformedInput),  # memlimit 48 MiB: below the floor
        (8, 0x41, MalformedInput),  # memlimit 1 GiB + 16 MiB: above the ceiling
        (7, 0x03, WrongPassphrase),  # opslimit 3: accepted, but it is in the associated data
        (9, 0x01, WrongPassphrase),  # memlimit 64 MiB + 64 KiB: likewise
    ],
)
def test_header_fields(tmp_path: Path, sealed: bytes, position: int, value: int, error: type[Exception]) -> None:
    altered = bytearray(sealed)
    altered[position] = value
    _write(tmp_path / "v", bytes(altered))
    with pytest.raises(error):
        open_vault(tmp_path / "v", PASSPHRASE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_extended_files_are_refused(tmp_path: Path, sealed: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(sealed) - 1), label="length")
    extra = data.draw(st.binary(min_size=0, max_size=8), label="appended")
    candidate = sealed[:cut] if not extra else sealed + extra
    _write(tmp_path / "v", candidate)
    with pytest.raises((WrongPassphrase, MalformedInput)) as info:
        open_vault(tmp_path / "v", PASSPHRASE)
    _assert_clean_error(info.value)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=200) | st.binary(max_size=100).map(lambda b: b"SPV\x01" + b))
def test_garbage_is_refused(tmp_path: Path, garbage: bytes) -> None:
    _write(tmp_path / "v", garbage)
    with pytest.raises((WrongPassphrase, MalformedInput)):
        open_vault(tmp_path / "v", PASSPHRASE)


# --- contents ------------------------------------------------------------------------------


def test_contents_are_immutable_values() -> None:
    base = VaultContents({"a": b"1"})
    added = base.with_entry("b", b"2")
    replaced = added.with_entry("a", b"3")
    assert base.names() == ("a",)
    assert added.names() == ("a", "b")
    assert replaced.get("a") == b"3"
    assert added.get("a") == b"1"
    assert added.without("a").names() == ("b",)
    assert "b" in added
    assert list(added) == ["a", "b"]
    with pytest.raises(AttributeError):
        base._entries = {}


def test_missing_entry() -> None:
    contents = _contents()
    with pytest.raises(NoSuchEntry) as info:
        contents.get("nope")
    assert isinstance(info.value, KeyError)
    _assert_clean_error(info.value)
    with pytest.raises(NoSuchEntry):
        contents.without("nope")


def test_repr_and_errors_never_show_values() -> None:
    contents = _contents()
    for text in (repr(contents), str(contents), f"{contents}", repr([contents])):
        _assert_no_secret(text)
        assert "handler.identity" in text
    with pytest.raises(MalformedInput) as info:
        VaultContents({"ok": CANARY, "BAD": CANARY})
    _assert_clean_error(info.value)
    with pytest.raises(MalformedInput) as info:
        VaultContents({"ok": CANARY.decode()})  # type: ignore[dict-item]
    _assert_clean_error(info.value)


def test_weak_passphrase_error_does_not_quote_it(tmp_path: Path) -> None:
    with pytest.raises(WeakPassphrase) as info:
        create_vault(tmp_path / "v", Passphrase("CANARY-short"), _contents(), **FAST)
    assert "CANARY-short" not in str(info.value)
    assert "CANARY-short" not in repr(info.value)


_NAME_RE = r"[a-z0-9][a-z0-9._-]{0,63}"
_VALID_NAME = st.from_regex(_NAME_RE, fullmatch=True)


@given(name=_VALID_NAME, value=st.binary(max_size=64))
def test_valid_names_accepted(name: str, value: bytes) -> None:
    assert VaultContents.empty().with_entry(name, value).get(name) == value


@given(name=st.text(max_size=70).filter(lambda s: not re.fullmatch(_NAME_RE, s)))
def test_invalid_names_refused(name: str) -> None:
    with pytest.raises(MalformedInput):
        VaultContents.empty().with_entry(name, b"x")
