"""The gettext catalogs match the templates: every message has a Russian translation with the same placeholders."""

from __future__ import annotations

import io
import re
from importlib import resources
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from safepassage.server.web.i18n import LANGUAGES, catalog_path

TEMPLATES = Path(__file__).resolve().parents[1] / "server" / "web" / "templates"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _template_messages() -> set[str]:
    found = extract_from_dir(
        str(TEMPLATES),
        method_map=[("**.html", "jinja2")],
        options_map={"**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}},
    )
    return {message for _, _, message, _, _ in found if isinstance(message, str)}


def _catalog(lang: str) -> dict[str, str]:
    data = resources.files("safepassage.server.web").joinpath(catalog_path(lang)).read_bytes()
    return {m.id: m.string for m in read_po(io.BytesIO(data)) if m.id and isinstance(m.id, str)}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_has_exactly_the_template_messages(lang: str) -> None:
    assert set(_catalog(lang)) == _template_messages()


def test_every_russian_message_is_translated_with_its_placeholders() -> None:
    for msgid, msgstr in _catalog("ru").items():
        assert msgstr.strip(), msgid
        assert msgstr != msgid, msgid
        assert sorted(_PLACEHOLDER.findall(msgstr)) == sorted(_PLACEHOLDER.findall(msgid)), msgid
