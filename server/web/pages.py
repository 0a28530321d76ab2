"""The page handlers: ``/``, ``/{lang}/``, ``/safety``, ``/contact``, ``/return`` and the style sheet.

Every page goes through :func:`_page`, which turns a refusal into an HTML page
with the right status (never the API's JSON, never a traceback) and logs an
unexpected error by type only, like the API's middleware.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Final

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from safepassage.crypto.codename import parse_codename
from safepassage.crypto.envelope import MAX_BODY
from safepassage.crypto.errors import InvalidCodename, SafePassageError

from ..context import Intake, intake_of
from ..errors import ApiError
from .browser import check_browser
from .forms import ContactForm, read_contact_form, read_text_form
from .i18n import LANGUAGE_NAMES, LANGUAGES
from .sealing import (
    Mailroom,
    WebSealer,
    issue_form_token,
    read_mailbox,
    seal_contact,
    seal_follow_up,
    spend_form_token,
)

log = logging.getLogger("safepassage.server")

routes = web.RouteTableDef()
LANG: Final = "{lang:ru|en}"
SEALER = web.AppKey("web_sealer", WebSealer)
ENV_KEYS: Final = {code: web.AppKey(f"jinja2_{code}", jinja2.Environment) for code in LANGUAGES}
STYLE: Final = resources.files("safepassage.server.web").joinpath("static/style.css").read_bytes()
#: The one bundled script (server/web/js, built from the lockfile; tests/test_web_js_build.py rebuilds it).
SCRIPT: Final = resources.files("safepassage.server.web").joinpath("static/seal.js").read_bytes()
_RETURN_FIELDS: Final = {"form": 1024, "codename": 512, "contact": 64, "message": MAX_BODY, "action": 16}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _lang(request: web.Request) -> str:
    lang = request.match_info.get("lang", "ru")
    return lang if lang in LANGUAGES else "ru"


def _common(request: web.Request, page: str) -> dict[str, Any]:
    app = intake_of(request)
    cfg = app.config
    try:
        directory = app.published().directory
        organisation = directory.organisation
        fingerprint = directory.admins.fingerprint()
    except ApiError:
        organisation, fingerprint = "", cfg.org_fingerprint
    return {
        "lang": _lang(request),
        "page": page,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "service_name": cfg.operator_name or organisation or "Safe Passage",
        "operator_name": cfg.operator_name or organisation or "Safe Passage",
        "operator_about": cfg.operator_about,
        "fingerprint": fingerprint,
        "onion_hint": f"http://{request.host}",
        "browser": check_browser(request.headers.get("User-Agent", ""), request.host),
        "sealing_on": bool(cfg.web_server_sealing),
    }


def render(request: web.Request, template: str, page: str, status: int = 200, **context: Any) -> web.Response:
    lang = _lang(request)
    response = aiohttp_jinja2.render_template(
        template, request, {**_common(request, page), **context}, app_key=ENV_KEYS[lang], status=status
    )
    response.headers["Content-Language"] = lang
    return response


def _page(name: str) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as exc:
                return render(request, "error.html", name, exc.status, code=exc.code)
            except web.HTTPException:
                raise
            except Exception as exc:
                # Type and route only: the exception text may quote the form.
                log.error("internal error %s in web page %s", type(exc).__name__, name)
                return render(request, "error.html", name, 500, code="internal_error")

        return run

    return wrap


@routes.get("/", name="web_root")
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"/{LANGUAGES[0]}/")


@routes.get("/static/style.css", name="web_style")
async def style(request: web.Request) -> web.StreamResponse:
    return web.Response(body=STYLE, content_type="text/css", charset="utf-8")


@routes.get("/static/seal.js", name="web_script")
async def script(request: web.Request) -> web.StreamResponse:
    return web.Response(body=SCRIPT, content_type="text/javascript", charset="utf-8")


@routes.get(f"/{LANG}/", name="web_index")
@_page("")
async def index(request: web.Request) -> web.StreamResponse:
    return render(request, "index.html", "")


@routes.get(f"/{LANG}/safety", name="web_safety")
@_page("safety")
async def safety(request: web.Request) -> web.StreamResponse:
    return render(request, "safety.html", "safety")


# --- contact ---------------------------------------------------------------------------------------------


def _contact_page(
    request: web.Request, *, status: int = 200, error_code: str = "", values: Mapping[str, str] | None = None
) -> web.Response:
    app = intake_of(request)
    cfg = app.config
    context: dict[str, Any] = {"values": values or {}, "error_code": error_code}
    directory = app.published().directory
    languages = sorted({code for pool in directory.pools for code in pool.languages} | set(LANGUAGES))
    context.update(
        # Without server sealing the form still serves the browser-sealing path.
        form_token=issue_form_token(app) if cfg.web_server_sealing else "",
        pools=directory.pools,
        message_languages=languages,
        max_files=cfg.max_attachments,
        max_upload_mb=cfg.web_max_upload_bytes // 1_000_000,
        js_day=Markup('<span id="js-day"></span>'),
    )
    return render(request, "contact.html", "contact", status, **context)


@routes.get(f"/{LANG}/contact", name="web_contact_form")
@_page("contact")
async def contact_form(request: web.Request) -> web.StreamResponse:
    return _contact_page(request)


def _sealing_on(app: Intake) -> None:
    if not app.config.web_server_sealing:
        raise ApiError(403, "server_sealing_off", "This server does not seal for browsers.")


@routes.post(f"/{LANG}/contact", name="web_contact_send")
@_page("contact")
async def contact_send(request: web.Request) -> web.StreamResponse:
    app = intake_of(request)
    _sealing_on(app)
    cfg = app.config
    form = ContactForm()
    sealer = request.app[SEALER]
    try:
        async with sealer.upload_slot():
            await read_contact_form(request, form, max_upload=cfg.web_max_upload_bytes, max_files=cfg.max_attachments)
            _check_contact_form(form)
            await spend_form_token(app, form.get("form"), submission=True)
            sent = await seal_contact(app, sealer, form, language=form.get("language"))
    except ApiError as exc:
        # The applicant's words come back in this one response (no-store),
        # so a refusal never loses a message they may not dare write twice.
        values = {k: v for k, v in form.text.items() if k != "form"}
        return _contact_page(request, status=exc.status, error_code=exc.code, values=values)
    finally:
        form.wipe()
    return render(request, "codename.html", "contact", 201, codename=sent.codename.reveal(), day=sent.day)


def _check_contact_form(form: ContactForm) -> None:
    if not form.get("message").strip():
        raise ApiError(400, "empty_message", "Please write a message.")
    language = form.get("language")
    if not (2 <= len(language) <= 3 and language.isascii() and language.isalpha() and language.islower()):
        raise ApiError(400, "bad_language", "Choose one of the listed languages.")


# --- return ----------------------------------------------------------------------------------------------


def _return_page(
    request: web.Request,
    *,
    status: int = 200,
    error_code: str = "",
    mailroom: Mailroom | None = None,
    sent: bool = False,
    values: Mapping[str, str] | None = None,
) -> web.Response:
    app = intake_of(request)
    context: dict[str, Any] = {"values": values or {}, "error_code": error_code, "mailroom": mailroom, "sent": sent}
    context["form_token"] = issue_form_token(app) if app.config.web_server_sealing else ""
    return render(request, "return.html", "return", status, **context)


@routes.get(f"/{LANG}/return", name="web_return_form")
@_page("return")
async def return_form(request: web.Request) -> web.StreamResponse:
    return _return_page(request)


@routes.post(f"/{LANG}/return", name="web_return_send")
@_page("return")
async def return_send(request: web.Request) -> web.StreamResponse:
    app = intake_of(request)
    _sealing_on(app)
    # Never request.post(): for a multipart body it would spool a file part
    # to a temporary file, and nothing from an applicant may touch the disk.
    values = await read_text_form(request, _RETURN_FIELDS)
    action = values.get("action", "read")
    message = values.get("message", "")
    kept = {"message": message}
    try:
        if action not in ("read", "follow-up"):
            raise ApiError(400, "malformed_request", "Unknown action.")
        try:
            codename = parse_codename(values.get("codename", ""))
        except InvalidCodename:
            raise ApiError(400, "invalid_codename", "That is not a valid codename.") from None
        await spend_form_token(app, values.get("form", ""), submission=action == "follow-up")
        keys = await request.app[SEALER].derive(codename)
        mailroom = await read_mailbox(app, keys)
        if action == "read":
            return _return_page(request, mailroom=mailroom, values=kept)
        if not message.strip():
            raise ApiError(400, "empty_message", "Please write a message.")
        if not mailroom.contact_ids:
            raise ApiError(404, "not_found", "No contact for this codename.")
        contact_id = values.get("contact") or mailroom.contact_ids[-1]
        await seal_follow_up(app, keys, contact_id, message)
        del keys
    except ApiError as exc:
        return _return_page(request, status=exc.status, error_code=exc.code, values=kept)
    except SafePassageError:
        return _return_page(request, status=400, error_code="malformed_request", values=kept)
    return _return_page(request, status=201, mailroom=mailroom, sent=True)
