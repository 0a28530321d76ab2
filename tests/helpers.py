"""Builders shared by tests: deterministic keys and small directories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from safepassage.crypto import _primitives as P
from safepassage.crypto.directory import (
    Directory,
    Handler,
    IntakeKey,
    IntegrationService,
    Pool,
    SignedDirectory,
    sign_directory,
)
from safepassage.crypto.keys import HybridPrivateKey, SigningKey
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.translog import MerkleLog, SignedTreeHead, TreeHead, sign_tree_head

DAY = 86400
WEEK = 7 * DAY


def seed(label: str, n: int = 32) -> bytes:
    """Deterministic key material for known-answer tests (never for real keys)."""
    return P.hkdf_sha256(label.encode(), salt=b"safepassage-tests", info=b"seed", length=n)


def signing_key(label: str) -> SigningKey:
    return SigningKey.from_seed_bytes(seed(label))


def hybrid_key(label: str) -> HybridPrivateKey:
    return HybridPrivateKey.from_private_bytes(seed(label, 96))


@dataclass
class Org:
    """An organisation: admins, handlers with their private keys, and service keys."""

    admins: list[SigningKey] = field(default_factory=lambda: [signing_key(f"admin-{i}") for i in range(3)])
    threshold: int = 2
    handler_ids: Sequence[str] = ("alice", "bob", "carol")
    identities: dict[str, SigningKey] = field(default_factory=dict)
    intake: dict[str, HybridPrivateKey] = field(default_factory=dict)
    integration_signing: SigningKey = field(default_factory=lambda: signing_key("integration"))
    integration_key: HybridPrivateKey = field(default_factory=lambda: hybrid_key("integration-kem"))
    receipt: SigningKey = field(default_factory=lambda: signing_key("receipt"))

    def __post_init__(self) -> None:
        for hid in self.handler_ids:
            self.identities.setdefault(hid, signing_key(f"identity-{hid}"))
            self.intake.setdefault(hid, hybrid_key(f"intake-{hid}"))

    @property
    def admin_set(self) -> KeySet:
        return KeySet(tuple(a.verify_key for a in self.admins), self.threshold)

    def handler(self, hid: str, pools: Sequence[str] = ("general",), start: int = 0) -> Handler:
        key = IntakeKey.create(
            hid, self.identities[hid], self.intake[hid].public_key, not_before=start, not_after=start + WEEK
        )
        return Handler(hid, hid.title(), self.identities[hid].verify_key, tuple(pools), (key,))

    def directory(self, version: int = 1, **changes: object) -> Directory:
        base = Directory(
            version=version,
            issued=1_700_000_000 + version,
            organisation="Safe Passage test organisation",
            admins=self.admin_set,
            pools=(Pool("general", "General", ("ru", "en")), Pool("science", "Science", ("ru",))),
            # The second handler also reads the science pool.
            handlers=tuple(
                self.handler(hid, ("general", "science") if i == 1 else ("general",))
                for i, hid in enumerate(self.handler_ids)
            ),
            integration=IntegrationService(self.integration_signing.verify_key, (self.integration_key.public_key,)),
            receipt_key=self.receipt.verify_key,
            onions={},
            policy={"intake_key_days": 7},
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def signed(self, directory: Directory, signers: Sequence[SigningKey] | None = None) -> SignedDirectory:
        return sign_directory(directory, self.admins[: self.threshold] if signers is None else signers)

    def publication(
        self,
        directory: Directory,
        log: MerkleLog,
        *,
        timestamp: int = 1_700_000_000,
        signers: Sequence[SigningKey] | None = None,
    ) -> tuple[SignedDirectory, SignedTreeHead]:
        """The signed directory and the head over ``log`` with it appended (``log`` is not changed)."""
        signed = self.signed(directory, signers)
        extended = MerkleLog(log.leaf_hashes())
        extended.append(signed.to_bytes())
        head = TreeHead(extended.size, extended.root(), timestamp)
        keys = self.admins[: self.threshold] if signers is None else signers
        return signed, SignedTreeHead(
            head, tuple(sorted((sign_tree_head(head, k) for k in keys), key=lambda s: s.key_id.raw))
        )
