"""Security headers on every response, errors included.

Nothing is loaded from anywhere else; nothing is cached; no referrer leaves;
no framing; the API's JSON cannot be sniffed into something executable. The
web pages (their own issue) keep the same CSP: no inline script or style.
"""

from __future__ import annotations

import json
from typing import Final

from aiohttp import web, web_protocol

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'none'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal: it runs for every response, errors included."""
    response.headers.update(HEADERS)
    # aiohttp announces itself and its version; that helps nobody but an attacker.
    response.headers["Server"] = "safepassage"


#: What any malformed request gets: the same words whatever was wrong, so nothing is echoed.
_PROTOCOL_ERROR: Final = json.dumps(
    {"error": {"code": "bad_request", "message": "The request is not valid HTTP."}}, separators=(",", ":")
)
_INTERNAL_ERROR: Final = json.dumps(
    {"error": {"code": "internal_error", "message": "Internal error."}}, separators=(",", ":")
)


def _protocol_error(
    handler: web_protocol.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's own answer to a request its parser refused, or to a failure outside any app.

    Its version quotes the offending bytes back (a header, perhaps a token) in plain text and
    names aiohttp and its version; no app middleware or signal runs for it. This one says the
    same fixed JSON every app error has, with the security headers, and logs nothing.
    """
    if request.writer.output_size > 0:
        # Part of a response left already; the connection can only be dropped (aiohttp does the same).
        raise ConnectionError("the response had started; it cannot become an error")
    body = _INTERNAL_ERROR if status >= 500 else _PROTOCOL_ERROR
    response = web.Response(status=status, text=body, content_type="application/json")
    response.headers.update(HEADERS)
    response.headers["Server"] = "safepassage"
    response.force_close()
    return response


def secure(app: web.Application) -> None:
    """Security headers on every response of ``app``, and on aiohttp's own protocol errors.

    The second part is process-wide: aiohttp builds those answers before any app is chosen.
    """
    app.on_response_prepare.append(add_security_headers)
    setattr(web_protocol.RequestHandler, "handle_error", _protocol_error)  # noqa: B010 (mypy refuses a method assignment)
