"""``.ci/run``: the CI entry point sets CI=true itself, so a run by hand never skips a missing tool."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"


def test_ci_run_exports_ci_true(tmp_path: Path) -> None:
    # A stand-in ``make`` first on PATH reports the CI value the real one would see.
    fake_make = tmp_path / "make"
    fake_make.write_text('#!/bin/sh\necho "CI=${CI:-<unset>} args=$*"\n', encoding="utf-8")
    fake_make.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([str(CI_RUN)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CI=true args=test"
