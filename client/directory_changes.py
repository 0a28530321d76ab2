"""Building the next directory from named changes, and showing what changed (protocol 19).

An admin never signs a document it did not see explained: :func:`describe_changes`
lists every difference between the trusted directory and a proposal, with the
fingerprint of every key added, removed or replaced, so the admin can compare
them with their owners over a channel they trust before signing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from safepassage.crypto.directory import Directory, Handler, IntakeKey, IntegrationService, PolicyValue, Pool
from safepassage.crypto.keys import HybridPublicKey, VerifyKey
from safepassage.crypto.threshold import KeySet

from .errors import UsageError


@dataclass
class Changes:
    """What an admin asks to change; applied in the order of the fields below."""

    organisation: str | None = None
    add_admins: list[VerifyKey] = field(default_factory=list)
    remove_admins: list[VerifyKey] = field(default_factory=list)
    threshold: int | None = None
    add_pools: list[Pool] = field(default_factory=list)
    remove_pools: list[str] = field(default_factory=list)
    #: (handler id, display name, identity key, pools, intake key) from a handler's intake-key.json.
    add_handlers: list[Handler] = field(default_factory=list)
    remove_handlers: list[str] = field(default_factory=list)
    #: New intake keys (already signed by the handler's identity key) by handler id.
    intake_keys: dict[str, list[IntakeKey]] = field(default_factory=dict)
    #: Replace a handler's identity key (its intake keys must be signed by the new one).
    identities: dict[str, tuple[VerifyKey, list[IntakeKey]]] = field(default_factory=dict)
    integration: IntegrationService | None = None
    receipt_key: VerifyKey | None = None
    onions: dict[str, str] = field(default_factory=dict)
    policy: dict[str, PolicyValue] = field(default_factory=dict)
    #: Policy keys to remove (their defaults apply again).
    unset_policy: list[str] = field(default_factory=list)
    #: Drop intake keys that expired before this time (keeps the directory small).
    drop_expired_before: int | None = None

    def empty(self) -> bool:
        return self == Changes()


MAX_INTAKE_KEYS = 4


def _merge_intake(handler: Handler, new: Sequence[IntakeKey], now: int) -> Handler:
    keys = {k.key.key_id: k for k in handler.intake_keys if k.not_after > now}
    for k in new:
        keys[k.key.key_id] = k
    ordered = sorted(keys.values(), key=lambda k: (k.not_before, k.key.key_id.raw))
    if not ordered:
        raise UsageError(f"handler {handler.handler_id} would have no intake key left")
    # The directory holds at most 4 per handler: keep the newest.
    return replace(handler, intake_keys=tuple(ordered[-MAX_INTAKE_KEYS:]))


def _admins(base: KeySet | None, changes: Changes) -> KeySet:
    keys = {k.key_id: k for k in (base.keys if base else ())}
    for k in changes.remove_admins:
        if k.key_id not in keys:
            raise UsageError(f"admin key {k.fingerprint()} is not in the admin set")
        del keys[k.key_id]
    for k in changes.add_admins:
        keys[k.key_id] = k
    threshold = changes.threshold if changes.threshold is not None else (base.threshold if base else 0)
    if not keys:
        raise UsageError("the admin set would be empty")
    if not 1 <= threshold <= len(keys):
        raise UsageError(f"the threshold must be between 1 and {len(keys)}")
    return KeySet(tuple(keys.values()), threshold)


def _check_first(changes: Changes) -> None:
    missing = [
        name
        for name, value in (
            ("--organisation", changes.organisation),
            ("--add-admin", changes.add_admins),
            ("--add-pool", changes.add_pools),
            ("--integration-signing-key", changes.integration),
            ("--receipt-key", changes.receipt_key),
        )
        if not value
    ]
    if missing:
        raise UsageError("the first directory needs " + ", ".join(missing))


def _pools(base: Directory | None, changes: Changes) -> dict[str, Pool]:
    pools = {p.name: p for p in (base.pools if base else ())}
    for name in changes.remove_pools:
        if pools.pop(name, None) is None:
            raise UsageError(f"no pool {name}")
    for pool in changes.add_pools:
        pools[pool.name] = pool
    return pools


def _require(handlers: dict[str, Handler], hid: str) -> Handler:
    if hid not in handlers:
        raise UsageError(f"no handler {hid}")
    return handlers[hid]


def _handlers(base: Directory | None, changes: Changes, pools: dict[str, Pool], now: int) -> dict[str, Handler]:
    handlers = {h.handler_id: h for h in (base.handlers if base else ())}
    for hid in changes.remove_handlers:
        del handlers[_require(handlers, hid).handler_id]
    for h in changes.add_handlers:
        if h.handler_id in handlers:
            raise UsageError(f"handler {h.handler_id} is already listed")
        handlers[h.handler_id] = h
    for hid, (identity, keys) in changes.identities.items():
        fresh = replace(_require(handlers, hid), identity_key=identity, intake_keys=())
        handlers[hid] = _merge_intake(fresh, keys, now)
    for hid, keys in changes.intake_keys.items():
        handlers[hid] = _merge_intake(_require(handlers, hid), keys, now)
    if changes.drop_expired_before is not None:
        cutoff = changes.drop_expired_before
        handlers = {hid: _merge_intake(h, (), cutoff) for hid, h in handlers.items()}
    for h in handlers.values():
        unknown = [p for p in h.pools if p not in pools]
        if unknown:
            raise UsageError(f"handler {h.handler_id} reads pool(s) {', '.join(unknown)} that would not exist")
    return handlers


def apply_changes(base: Directory | None, changes: Changes, now: int) -> Directory:
    """The next directory: ``base`` (``None`` for the first) with ``changes`` applied, version + 1."""
    if changes.empty():
        raise UsageError("no change given")
    if base is None:
        _check_first(changes)
    pools = _pools(base, changes)
    handlers = _handlers(base, changes, pools, now)
    integration = changes.integration or (base.integration if base else None)
    receipt = changes.receipt_key or (base.receipt_key if base else None)
    if integration is None or receipt is None:
        raise UsageError("the directory needs the integration service's keys and the server's receipt key")
    return Directory(
        version=(base.version if base else 0) + 1,
        issued=now,
        organisation=changes.organisation or (base.organisation if base else ""),
        admins=_admins(base.admins if base else None, changes),
        pools=tuple(sorted(pools.values(), key=lambda p: p.name)),
        handlers=tuple(sorted(handlers.values(), key=lambda h: h.handler_id)),
        integration=integration,
        receipt_key=receipt,
        onions={**(base.onions if base else {}), **changes.onions},
        policy=_policy(base, changes),
    )


def _policy(base: Directory | None, changes: Changes) -> dict[str, PolicyValue]:
    policy = {**(base.policy if base else {}), **changes.policy}
    for key in changes.unset_policy:
        if key in changes.policy:
            raise UsageError(f"policy {key!r} is both set and unset")
        if policy.pop(key, None) is None:
            raise UsageError(f"policy {key!r} is not set")
    return policy


# --- showing a change ---------------------------------------------------------------------------------


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _key_lines(prefix: str, keys: Sequence[VerifyKey | HybridPublicKey]) -> list[str]:
    return [f"{prefix} {k.fingerprint()}" for k in keys]


def _intake_line(sign: str, k: IntakeKey) -> str:
    return f"    {sign} intake key {k.key.fingerprint()}  valid {_day(k.not_before)} to {_day(k.not_after)}"


def _handler_changes(old: Handler, new: Handler) -> list[str]:
    lines: list[str] = []
    if old.name != new.name:
        lines.append(f"    name: {old.name!r} -> {new.name!r}")
    if old.pools != new.pools:
        lines.append(f"    pools: {', '.join(old.pools)} -> {', '.join(new.pools)}")
    if old.identity_key != new.identity_key:
        lines.append(f"    - identity {old.identity_key.fingerprint()}")
        lines.append(f"    + identity {new.identity_key.fingerprint()}   <- compare with the handler")
    before = {k.key.key_id: k for k in old.intake_keys}
    after = {k.key.key_id: k for k in new.intake_keys}
    # A key whose window (or signature) changed shows as removed and added again.
    lines += [_intake_line("-", k) for kid, k in before.items() if after.get(kid) != k]
    lines += [_intake_line("+", k) for kid, k in after.items() if before.get(kid) != k]
    return lines


def _describe_admins(old: Directory | None, new: Directory) -> list[str]:
    if old is not None and old.admins == new.admins:
        return []
    before = {k.key_id for k in old.admins.keys} if old else set()
    after = {k.key_id for k in new.admins.keys}
    was = f" (was {old.admins.threshold} of {len(old.admins.keys)})" if old else ""
    out = [f"ADMIN SET: {new.admins.threshold} of {len(new.admins.keys)} must sign{was}"]
    out += _key_lines("  - admin", [k for k in old.admins.keys if k.key_id not in after] if old else [])
    out += _key_lines("  + admin", [k for k in new.admins.keys if k.key_id not in before])
    out.append(f"  new organisation fingerprint: {new.admins.fingerprint()}")
    return out


def _describe_pools(old: Directory | None, new: Directory) -> list[str]:
    out = []
    old_pools = {p.name: p for p in (old.pools if old else ())}
    new_pools = {p.name: p for p in new.pools}
    for name in sorted(set(old_pools) | set(new_pools)):
        if old_pools.get(name) == new_pools.get(name):
            continue
        if name not in new_pools:
            out.append(f"- pool {name}")
        else:
            p = new_pools[name]
            out.append(f"{'~' if name in old_pools else '+'} pool {name}: {p.title!r} ({', '.join(p.languages)})")
    return out


def _describe_handlers(old: Directory | None, new: Directory) -> list[str]:
    out = []
    old_h = {h.handler_id: h for h in (old.handlers if old else ())}
    new_h = {h.handler_id: h for h in new.handlers}
    for hid in sorted(set(old_h) | set(new_h)):
        if hid not in new_h:
            out.append(f"- HANDLER {hid} (removed: revoked; open cases move to other readers)")
        elif hid not in old_h:
            h = new_h[hid]
            out.append(f"+ HANDLER {hid} ({h.name}), pools {', '.join(h.pools)}   <- vet: compare fingerprints")
            out.append(f"    identity {h.identity_key.fingerprint()}")
            out += [_intake_line("+", k) for k in h.intake_keys]
        elif old_h[hid] != new_h[hid]:
            out.append(f"~ handler {hid}")
            out += _handler_changes(old_h[hid], new_h[hid])
    return out


def _typed(value: PolicyValue | None) -> tuple[str, PolicyValue | None]:
    # 1 == True in Python: compare the JSON type too, or a change from 1 to true would not show.
    return type(value).__name__, value


def _describe_maps(
    name: str, old: dict[str, str] | dict[str, PolicyValue], new: dict[str, str] | dict[str, PolicyValue]
) -> list[str]:
    return [
        f"{name} {key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if _typed(old.get(key)) != _typed(new.get(key))
    ]


def describe_changes(old: Directory | None, new: Directory) -> str:
    """Every difference, one per line; keys by fingerprint."""
    out = [f"Directory version {old.version if old else 0} -> {new.version} (issued {_day(new.issued)})"]
    if old is None:
        out.append("This is the FIRST directory: its admin set becomes the organisation root.")
        out.append(f"  organisation fingerprint: {new.admins.fingerprint()}")
    if old is None or old.organisation != new.organisation:
        out.append(f"Organisation name: {new.organisation!r}")
    out += _describe_admins(old, new)
    out += _describe_pools(old, new)
    out += _describe_handlers(old, new)
    if old is None or old.integration != new.integration:
        out.append("INTEGRATION SERVICE keys:")
        out += _key_lines("  signing   ", [new.integration.signing_key])
        out += _key_lines("  encryption", list(new.integration.encryption_keys))
    if old is None or old.receipt_key != new.receipt_key:
        out.append(f"SERVER RECEIPT KEY: {new.receipt_key.fingerprint()}")
    out += _describe_maps("Onion", old.onions if old else {}, new.onions)
    out += _describe_maps("Policy", old.policy if old else {}, new.policy)
    if len(out) == 1:
        out.append("(no change but the version)")
    return "\n".join(out)
