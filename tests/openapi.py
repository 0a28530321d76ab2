"""Validate real responses against an OpenAPI document in docs/openapi/.

Each response's status must be documented for its operation, and a JSON body
must match the documented schema (JSON Schema 2020-12, as OpenAPI 3.1 uses).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DOCS = Path(__file__).resolve().parents[1] / "docs" / "openapi"


@cache
def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCS / f"{name}.yaml").read_text(encoding="utf-8"))
    return doc


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    prefix = doc["servers"][0]["url"]
    if not path.startswith(prefix):
        raise AssertionError(f"{path} is outside the API prefix {prefix}")
    rel = path[len(prefix) :]
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, rel) and method.lower() in item:
            op: dict[str, Any] = item[method.lower()]
            return op
    raise AssertionError(f"{method} {path} is not documented")


def check_response(name: str, method: str, path: str, status: int, body: Any) -> None:
    """Raise AssertionError unless (status, body) is what the document promises."""
    doc = load(name)
    op = _operation(doc, method, path)
    responses = op["responses"]
    if str(status) not in responses:
        raise AssertionError(f"{method} {path} answered {status}, which is not documented")
    response = _resolve(doc, responses[str(status)])
    content = response.get("content", {}).get("application/json")
    if content is None:
        return
    schema = {"$ref": "#/__target__", "__target__": content["schema"]}
    schema.update({k: v for k, v in doc.items() if k == "components"})
    jsonschema.Draft202012Validator(schema).validate(body)
