"""Security headers on every response, errors included.

Nothing is loaded from anywhere else; nothing is cached; no referrer leaves;
no framing; the API's JSON cannot be sniffed into something executable. The
web pages (their own issue) keep the same CSP: no inline script or style.
"""

from __future__ import annotations

from aiohttp import web

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
