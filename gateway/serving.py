"""Serving an aiohttp application on a host and port that may be 0 (the OS's choice).

The gateway's two HTTP servers (the OpenAI front door, ``/metrics``) bind their socket
themselves so that the port the OS chose can be read back; both run on the gateway's
event loop.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from gateway.openai_errors import HttpError

MAX_LINE_BYTES = 65_536
"""aiohttp's limit on the request line and on one header line (its default is 8,190):
beyond it the connection is answered by aiohttp's parser, before fedgate sees it, with a
plain-text ``400`` (docs/llm.md, "Headers")."""
MAX_HEADER_BYTES = 32_768
"""Total size of a request's header names and values fedgate accepts: more is a JSON
``431`` (``code: headers_too_large``)."""


def check_headers(request: web.Request) -> None:
    """Raise the ``431`` for headers over ``MAX_HEADER_BYTES`` in total."""
    total = sum(len(k) + len(v) for k, v in request.raw_headers)
    if total > MAX_HEADER_BYTES:
        raise HttpError(
            431,
            f"request headers too large: {total} bytes, at most {MAX_HEADER_BYTES}",
            "headers_too_large",
        )


class _QuietParseErrors(logging.Filter):
    """aiohttp logs a malformed request (a header line over its limit, bad framing) at
    error level with a traceback: any client could fill the log. One info line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "malformed HTTP request refused: %s (%s)"
            record.args = (type(exc).__name__, str(exc)[:200])
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(_QuietParseErrors())


async def serve(
    app: web.Application, host: str, port: int, **runner: Any
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; the runner (``cleanup()`` stops it) and the bound
    port. ``runner`` options go to ``web.AppRunner``. Raises ``OSError`` if the port is
    taken."""
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner)
    await app_runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        await app_runner.cleanup()
        raise
    await web.SockSite(app_runner, sock).start()
    return app_runner, int(sock.getsockname()[1])
