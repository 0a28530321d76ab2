"""One API error type, turned into JSON by one middleware (the sydent pattern).

Every refusal is ``ApiError(status, code, message)`` and answers
``{"error": {"code", "message"}}``. Anything else that escapes a handler is
logged by type and route only (never request content, never the exception
text, which may quote input) and answered as an opaque 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from safepassage.crypto.errors import SafePassageError

log = logging.getLogger("safepassage.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "malformed_request") -> ApiError:
    return ApiError(400, code, message)


def from_crypto(exc: SafePassageError, status: int, code: str) -> ApiError:
    """Our crypto errors carry only non-secret detail; their message is safe to return."""
    return ApiError(status, code, exc.message)


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# aiohttp's own HTTP errors (wrong method, unknown path, oversized body) mapped to our codes.
_HTTP_CODES = {
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "Method not allowed for this resource."),
    413: ("payload_too_large", "The request body is larger than this endpoint accepts."),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        response = error_response(exc.status, code, message)
        if "Allow" in exc.headers:
            # RFC 9110 15.5.6: a 405 names the methods the resource supports.
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        # Type and route only: exception text and tracebacks can quote input.
        log.error("internal error %s in %s %s", type(exc).__name__, request.method, request.match_info.route.name)
        return error_response(500, "internal_error", "Internal error.")
