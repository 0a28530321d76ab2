"""docs/storage.md lists exactly the tables and columns the models define."""

from __future__ import annotations

import re
from pathlib import Path

from safepassage.server.db.models import Base

DOC = Path(__file__).resolve().parents[1] / "docs" / "storage.md"


def _documented() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    table = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"### table `(\w+)`", line)
        if heading:
            table = heading.group(1)
            out[table] = set()
            continue
        row = re.match(r"\| `(\w+)` \|", line)
        if row and table is not None:
            out[table].add(row.group(1))
    return out


def test_every_stored_column_is_documented() -> None:
    models = {name: {c.name for c in t.columns} for name, t in Base.metadata.tables.items()}
    assert _documented() == models
