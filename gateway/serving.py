"""Serving an aiohttp application on a host and port that may be 0 (the OS's choice).

The gateway's two HTTP servers (the OpenAI front door, ``/metrics``) bind their socket
themselves so that the port the OS chose can be read back; both run on the gateway's
event loop.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import web


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
