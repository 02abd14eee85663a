"""Errors of the HTTP front door, answered as OpenAI does.

Every failure, the caller's or ours, is a JSON body
``{"error": {"message", "type", "param", "code"}}``: ``code`` is the contract's
``Fed-Error`` kind (``model_not_found`` for an unknown model), the HTTP status is the
contract's code, ``type`` OpenAI's class of it, ``param`` the request field at fault.

    HttpError     an error found before anything reaches NATS (auth, a bad body, size)
    FedError      an error of the federation (shared.errors), mapped by ``fed_error_response``
"""

from __future__ import annotations

import math

import msgspec
from aiohttp import web

from shared import errors

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "server_error",  # cancelled: not a flaw of the request (docs/llm.md's table)
}
_encoder = msgspec.json.Encoder()


class HttpError(Exception):
    """An error answered before anything reaches NATS (auth, malformed body, size)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    """The OpenAI error JSON."""
    return _encoder.encode(
        {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    )


def error_response(
    status: int, message: str, code: str, param: str | None = None, **headers: str
) -> web.Response:
    """An OpenAI-shaped error response."""
    return web.Response(
        status=status,
        body=error_body(status, message, code, param),
        content_type="application/json",
        headers=headers,
    )


def fed_error_response(exc: errors.FedError, model: str | None) -> web.Response:
    """A contract error as an OpenAI error (``model_not_found`` for an unknown model;
    ``Retry-After`` on an ``overloaded`` that knows when to come back)."""
    code = exc.kind
    message = exc.message
    if exc.code == 404 and model:
        code = "model_not_found"
        message = f"The model `{model}` does not exist or no node serves it ({exc.message})"
    headers = {}
    wait = getattr(exc, "retry_after_s", None)
    if isinstance(wait, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return error_response(exc.code, message, code, **headers)
