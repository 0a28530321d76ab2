"""docs/hostile-inputs.md lists exactly the refusals the server code can raise, with their statuses.

The refusals are read from the source: every ``ApiError(status, "code", ...)``,
``from_crypto(exc, status, "code")`` and ``bad_request(message[, "code"])``
call under server/, the ``missing_*`` codes of ``header_bytes`` for the headers
it is called with, and the middleware's mapping of aiohttp's own errors. A new
refusal without a row, or a row whose refusal is gone, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hostile-inputs.md"
SERVER = ROOT / "server"
#: What aiohttp itself refuses, mapped by server/errors.py (404 and 413 are also raised by us).
MIDDLEWARE = {(404, "not_found"), (405, "method_not_allowed"), (413, "payload_too_large")}


def _literal(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _header_names() -> dict[str, str]:
    """Module-level ``*_HEADER = "Safe-Passage-..."`` constants."""
    names: dict[str, str] = {}
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(_literal(node.value), str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_HEADER"):
                        names[target.id] = str(_literal(node.value))
    return names


def raised() -> set[tuple[int, str]]:
    headers = _header_names()
    found: set[tuple[int, str]] = set()
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            args = node.args
            if name == "ApiError" and len(args) >= 2:
                status, code = _literal(args[0]), _literal(args[1])
            elif name == "from_crypto" and len(args) >= 3:
                status, code = _literal(args[1]), _literal(args[2])
            elif name == "bad_request" and args:
                status, code = 400, _literal(args[1]) if len(args) > 1 else "malformed_request"
            elif name in ("header_bytes", "_header_bytes") and len(args) >= 2 and isinstance(args[1], ast.Name):
                header = headers[args[1].id]
                status, code = 403, "missing_" + header.lower().removeprefix("safe-passage-").replace("-", "_")
            else:
                continue
            if isinstance(status, int) and isinstance(code, str):
                found.add((status, code))
    return found | MIDDLEWARE


def documented() -> set[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8").split("## The APIs", 1)[1].split("## The parsers", 1)[0]
    return {(int(m[1]), m[2]) for m in re.finditer(r"\| (\d{3}) \| `([a-z_]+)` \|$", text, re.MULTILINE)}


def test_every_refusal_is_documented_with_its_status() -> None:
    assert len(raised()) > 40  # the scan finds the refusals (a broken scan must not pass quietly)
    assert documented() == raised()


def test_every_test_file_the_doc_names_exists() -> None:
    for name in set(re.findall(r"`(tests/[a-z_*]+\.py)`", DOC.read_text(encoding="utf-8"))):
        assert list(ROOT.glob(name)), name
