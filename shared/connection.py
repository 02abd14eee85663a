"""Connecting to NATS: auth, TLS, fast failure for CLIs, reconnect-forever for services.

All nats-py connection errors are mapped here, at one boundary, to ``NatsUnavailable``
with a one-line message a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats
from nats.aio.client import Client

from shared.config import NatsConfig

log = logging.getLogger("fedgate.nats")


class NatsUnavailable(ConnectionError):
    """NATS could not be reached (or refused us) within the allowed time."""


class RateLimitedLog:
    """Logs at most one line per ``interval_s`` for a noisy condition, counting the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message`` unless the same ``key`` was logged less than ``interval_s`` ago."""
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        dropped = self._suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" ({dropped} similar suppressed)" if dropped else ""
        self._log.warning(message + suffix, *args)


def tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """A client TLS context from the CA/cert/key paths, or None when none is set."""
    if not (cfg.tls_ca or cfg.tls_cert):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca)
    if cfg.tls_cert:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from a NatsConfig."""
    opts: dict[str, Any] = {
        "servers": cfg.servers,
        "connect_timeout": cfg.connect_timeout_s,
        "inbox_prefix": cfg.inbox_prefix,
    }
    if cfg.name:
        opts["name"] = cfg.name
    if cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password or ""
    if cfg.token:
        opts["token"] = cfg.token
    if cfg.creds_file:
        opts["user_credentials"] = cfg.creds_file
    if cfg.nkey_seed:
        opts["nkeys_seed"] = cfg.nkey_seed
    ctx = tls_context(cfg)
    if ctx is not None:
        opts["tls"] = ctx
        if cfg.tls_cert:
            opts["tls_hostname"] = cfg.servers[0].split("://")[-1].rsplit(":", 1)[0]
    return opts


async def connect(
    cfg: NatsConfig,
    *,
    service: bool = False,
    wait_s: float | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect, or raise ``NatsUnavailable`` within ``wait_s`` seconds.

    A CLI (``service=False``) tries briefly and fails fast. A service keeps trying to
    reconnect forever once connected, and waits ``wait_s`` (default 30 s) for the first
    connection so that it can start before the server does.
    """
    limit = wait_s if wait_s is not None else (30.0 if service else cfg.connect_timeout_s + 1)
    noisy = RateLimitedLog(log)

    async def error_cb(exc: Exception) -> None:
        noisy.warning(type(exc).__name__, "NATS error: %s", exc or type(exc).__name__)

    async def disconnected_cb() -> None:
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected_cb() -> None:
        if on_reconnect is not None:
            await on_reconnect()

    opts = connect_options(cfg)
    opts.update(
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        max_reconnect_attempts=-1 if service else 1,
        reconnect_time_wait=0.25 if service else 0.1,
        allow_reconnect=True,
    )
    try:
        return await asyncio.wait_for(nats.connect(**opts), limit)
    except TimeoutError as exc:
        raise NatsUnavailable(
            f"cannot reach NATS at {cfg.url} within {limit:g}s "
            "(is nats-server running? try `fedgate up` or pass --nats URL)"
        ) from exc
    except (OSError, nats.errors.Error) as exc:
        text = str(exc) or type(exc).__name__
        if "authorization" in text.lower():
            raise NatsUnavailable(f"NATS at {cfg.url} refused our credentials: {text}") from exc
        raise NatsUnavailable(f"cannot connect to NATS at {cfg.url}: {text}") from exc


async def bounded(stop: Coroutine[Any, Any, Any], seconds: float, what: str) -> None:
    """Await ``stop`` for at most ``seconds`` (a stop must end even with NATS gone)."""
    try:
        await asyncio.wait_for(stop, seconds)
    except TimeoutError:
        logging.getLogger("fedgate").warning(
            "%s took more than %.0f s: gave up waiting", what, seconds
        )
    except Exception as exc:  # NATS went away while stopping: nothing left to tell
        logging.getLogger("fedgate").warning("%s: %r", what, exc)


async def close_connection(nc: Client, drain_s: float = 5.0) -> None:
    """Drain the connection when NATS is there (bounded), close it in any case."""
    if nc.is_connected:
        await bounded(nc.drain(), drain_s, "draining the NATS connection")
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()
