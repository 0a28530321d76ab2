"""Plain-text views of protocol objects for people to read and compare."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from safepassage.crypto.directory import Directory


def printable(text: str) -> str:
    """Text made safe for a terminal or a text file: no escape sequences or direction overrides; lines kept."""
    # Every character of category C is non-printable to str.isprintable (which runs in C), so
    # text it accepts, apart from newlines and tabs, has nothing to remove.
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def describe_directory(d: Directory) -> str:
    lines = [
        f"Organisation:    {d.organisation}",
        f"Directory:       version {d.version}, issued {_when(d.issued)}",
        f"Organisation fingerprint: {d.admins.fingerprint()}",
        f"Admins ({d.admins.threshold} of {len(d.admins.keys)} must sign):",
    ]
    lines += [f"  {k.fingerprint()}" for k in d.admins.keys]
    lines.append("Pools:")
    lines += [f"  {p.name:<12} {p.title} ({', '.join(p.languages)})" for p in d.pools]
    lines.append("Handlers:")
    for h in d.handlers:
        lines.append(f"  {h.handler_id} ({h.name}), pools: {', '.join(h.pools)}")
        lines.append(f"    identity   {h.identity_key.fingerprint()}")
        for k in h.intake_keys:
            lines.append(f"    intake key {k.key.fingerprint()}  valid {_when(k.not_before)} to {_when(k.not_after)}")
    lines.append("Integration service:")
    lines.append(f"  signing    {d.integration.signing_key.fingerprint()}")
    lines += [f"  encryption {k.fingerprint()}" for k in d.integration.encryption_keys]
    lines.append(f"Server receipt key: {d.receipt_key.fingerprint()}")
    for role, onion in sorted(d.onions.items()):
        lines.append(f"Onion ({role}): {onion}")
    return "\n".join(lines)
