"""Leftovers of a crashed run (hidden temporaries that may hold plaintext) are swept from the
output folder by the next command that writes there, once nothing has touched them for an hour."""

from __future__ import annotations

import os
import time
from pathlib import Path

from safepassage.client.case_files import STALE_SECONDS, TEMP_PREFIX, prepare_folder, publish_file


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_folder(out)
    old = time.time() - STALE_SECONDS - 60
    stale_file = out / f"{TEMP_PREFIX}abc"
    stale_file.write_bytes(b"plaintext of a case from a killed run")
    stale_dir = out / f"{TEMP_PREFIX}dir"
    stale_dir.mkdir()
    (stale_dir / "0").write_bytes(b"an attachment")
    for path in (stale_dir / "0", stale_dir, stale_file):
        os.utime(path, (old, old))
    fresh = out / f"{TEMP_PREFIX}running"
    fresh.write_bytes(b"being written by a command still running")
    kept = out / "case.txt"
    kept.write_bytes(b"a published case file")
    os.utime(kept, (old, old))

    prepare_folder(out)  # what read and read-all do first
    publish_file(out, "next.txt", b"the next case")
    assert sorted(p.name for p in out.iterdir()) == sorted([fresh.name, "case.txt", "next.txt"])
