"""server/web/static/seal.js is exactly what the pinned bundler makes from the pinned packages.

The packages come from package-lock.json (exact versions with integrity
hashes; ``npm ci`` refuses anything else) and the bundler is esbuild at the
version the lockfile pins; rebuilding with the command in package.json must
give the committed file byte for byte.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from .node_js import JS, require_node

STATIC = JS.parent / "static" / "seal.js"


def test_lockfile_pins_every_package_with_integrity() -> None:
    lock = json.loads((JS / "package-lock.json").read_text(encoding="utf-8"))
    package = json.loads((JS / "package.json").read_text(encoding="utf-8"))
    assert lock["lockfileVersion"] >= 3
    for name, version in {**package["dependencies"], **package["devDependencies"]}.items():
        assert version[0].isdigit(), f"{name} must be pinned to one version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    for path, entry in lock["packages"].items():
        # esbuild's binaries for other platforms are optional and listed without
        # a hash (npm fills it in when one is installed); ours must have one.
        if path and (not entry.get("optional") or path == "node_modules/@esbuild/linux-x64"):
            assert entry.get("integrity", "").startswith("sha512-"), path


def test_bundle_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    require_node()
    command = shlex.split(json.loads((JS / "package.json").read_text(encoding="utf-8"))["scripts"]["build"])
    assert command[0] == "esbuild"
    out = tmp_path / "seal.js"
    args = [a if not a.startswith("--outfile=") else f"--outfile={out}" for a in command[1:]]
    done = subprocess.run(
        [str(JS / "node_modules" / ".bin" / "esbuild"), *args], cwd=JS, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes() == STATIC.read_bytes(), (
        "rebuild server/web/static/seal.js: cd server/web/js && npm ci && npm run build"
    )
