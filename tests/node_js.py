"""Running the browser's protocol code (server/web/js) under node, for tests.

The npm packages come from server/web/js/package-lock.json (``npm ci``, from
the registry, checksums pinned in the lockfile). With CI=true a missing node or
npm is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).resolve().parents[1] / "server" / "web" / "js"
CLI = JS / "test" / "cli.mjs"


def require_node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required for the browser sealing tests")
        pytest.skip("node and npm are not installed")
    if not (JS / "node_modules" / ".package-lock.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=JS,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return node


def run(request: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    node = require_node()
    done = subprocess.run(
        [node, str(CLI)], input=json.dumps(request).encode(), capture_output=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
