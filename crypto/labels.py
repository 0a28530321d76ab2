"""Every domain-separation label and format marker, each defined once.

These mirror the table in docs/protocol.md, section 1.2 ("Labels"). A label is
never reused for a second purpose: a signature or key made for one thing must
not be accepted as another. tests/test_labels.py checks that this module and
the spec list the same labels with the same bytes and that none repeats.
"""

from __future__ import annotations

from typing import Final

# --- format markers (the first bytes of every binary object) ---------------------
ENVELOPE_MAGIC: Final = b"SPE\x01"
CHUNK_MAGIC: Final = b"SPC\x01"
VAULT_MAGIC: Final = b"SPV\x01"
POW_MAGIC: Final = b"SPW\x01"

# --- key identity ---------------------------------------------------------------
KEY_ID: Final = b"safepassage/v1/key-id"
FINGERPRINT: Final = b"safepassage/v1/fingerprint"
ORG_FINGERPRINT: Final = b"safepassage/v1/org-fingerprint"
KEY_TYPE_ED25519: Final = b"ed25519"
KEY_TYPE_HYBRID: Final = b"x25519-mlkem768"
KEY_TYPE_KEYSET: Final = b"keyset"

# --- envelope ---------------------------------------------------------------------
HYBRID_COMBINER: Final = b"safepassage/v1/hybrid-kem"
WRAP_AD: Final = b"safepassage/v1/wrap"
COMMIT_KEY: Final = b"safepassage/v1/commit-key"
BODY_KEY: Final = b"safepassage/v1/body-key"
CHUNK_KEY: Final = b"safepassage/v1/chunk-key"
CHUNK_AD: Final = b"safepassage/v1/chunk"

# --- signatures (each is prefixed by SIGNATURE, see keys.py) ---------------------
SIGNATURE: Final = b"safepassage/v1/sig/"
SIG_DIRECTORY: Final = b"directory"
SIG_INTAKE_KEY: Final = b"intake-key"
SIG_TREE_HEAD: Final = b"tree-head"
SIG_WITNESS: Final = b"witness-cosign"
SIG_RECEIPT: Final = b"receipt"
SIG_MAILBOX_AUTH: Final = b"mailbox-auth"
SIG_CONTACT: Final = b"contact"

# --- codename -----------------------------------------------------------------------
CODENAME_SALT: Final = b"safepassage/v1/codename-salt"
CODENAME_REPLY_X25519: Final = b"safepassage/v1/codename/reply-x25519"
CODENAME_REPLY_MLKEM: Final = b"safepassage/v1/codename/reply-mlkem768"
CODENAME_MAILBOX: Final = b"safepassage/v1/codename/mailbox-ed25519"

# --- vault and proof of work ------------------------------------------------------------
VAULT_KEY: Final = b"safepassage/v1/vault-key"
POW_INPUT: Final = b"safepassage/v1/pow"
POW_SALT: Final = b"safepassage/v1/pow-salt"
POW_MAC: Final = b"safepassage/v1/pow-mac"
MAILBOX_NONCE_MAC: Final = b"safepassage/v1/mailbox-nonce-mac"

# --- transparency log (RFC 6962 prefixes; not labels but bound to meaning) ----------------
MERKLE_LEAF_PREFIX: Final = b"\x00"
MERKLE_NODE_PREFIX: Final = b"\x01"

# --- intake API (section 15) -----------------------------------------------------------------
SIG_SUBMISSION: Final = b"submission"
SIG_FOLLOW_UP: Final = b"follow-up"

# --- handlers and the integration service (sections 16 and 17) -------------------------------
SIG_REPLY: Final = b"reply"
SIG_ESCALATION: Final = b"escalation"
SIG_DELIVERY: Final = b"package-delivery"
SIG_INTEGRATION_RECEIPT: Final = b"integration-receipt"

# --- staff credentials at rest (section 18) ---------------------------------------------------
TOTP_MAGIC: Final = b"SPT\x01"
TOTP_SECRET_AD: Final = b"safepassage/v1/totp-secret"

# --- audit log (section 20) ---------------------------------------------------------------------
SIG_AUDIT: Final = b"audit-entry"
AUDIT_ENTRY_HASH: Final = b"safepassage/v1/audit-entry-hash"
