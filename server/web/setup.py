"""Mount the pages on the public intake app: one Jinja2 environment per language."""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..config import ServerConfig
from .i18n import LANGUAGES, load_translations
from .pages import ENV_KEYS, SEALER, routes
from .sealing import WebSealer


def setup_pages(app: web.Application, config: ServerConfig) -> None:
    for code in LANGUAGES:
        env = aiohttp_jinja2.setup(
            app,
            app_key=ENV_KEYS[code],
            loader=jinja2.PackageLoader("safepassage.server.web", "templates"),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            default_helpers=False,
        )
        env.policies["ext.i18n.trimmed"] = True
        env.install_gettext_translations(load_translations(code), newstyle=True)  # type: ignore[attr-defined]
    app[SEALER] = WebSealer(config.web_sealing_per_minute)
    app.add_routes(routes)
