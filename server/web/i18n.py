"""Message catalogs: gettext ``.po`` files read with Babel at start.

The catalogs are kept as ``.po`` text only (no compiled ``.mo`` in the tree):
Babel compiles them in memory when the app starts, so a translator edits one
file and nothing binary can drift from it. The language is part of the URL
(``/ru/...``, ``/en/...``), chosen by a link: no cookie, no Accept-Language
sniffing (Tor Browser sends the same header for everyone on purpose).
"""

from __future__ import annotations

import gettext
import io
from importlib import resources
from typing import Final

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

#: Russian first: the default and the first link.
LANGUAGES: Final = ("ru", "en")
DEFAULT_LANGUAGE: Final = "ru"
LANGUAGE_NAMES: Final = {"ru": "Русский", "en": "English"}
DOMAIN: Final = "messages"


def catalog_path(language: str) -> str:
    return f"locale/{language}/LC_MESSAGES/{DOMAIN}.po"


def load_translations(language: str) -> gettext.GNUTranslations:
    if language not in LANGUAGES:
        raise ValueError("unknown language")
    source = resources.files("safepassage.server.web").joinpath(catalog_path(language)).read_bytes()
    catalog = read_po(io.BytesIO(source), locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)
