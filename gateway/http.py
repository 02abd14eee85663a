"""The OpenAI-compatible HTTP front door of a gateway (``fedgate gateway --http-port N``).

    GET  /v1/models            the models the gateway's catalog holds
    POST /v1/chat/completions  -> infer.generate (or infer.code), stream or not
    POST /v1/completions       -> infer.generate (or infer.code), stream or not
    POST /v1/embeddings        -> infer.embed, one request per input
    GET  /openapi.json         the OpenAPI 3.1 document of these endpoints

Each HTTP request becomes one request of the NATS contract, handed in-process to this
gateway's engine (``gateway.local.LocalClient``: no NATS hop into its own gateway; only
the dispatch and the node's replies travel over NATS); the endpoints, and how a request
and its answer are translated, are the ``Endpoints`` mixin of gateway/openai_endpoints.py.

Limits: a request whose NATS body would not fit the server's ``max_payload`` (less the
dispatch envelope) is a ``413``; every client value copied onto NATS (``traceparent``,
``tracestate``, model, ``user``, ``qos``, ``capability``) is validated first. The
request id is a client's ``X-Request-Id`` when it is of the request-id alphabet (scoped
to the caller's tenant, like every request id), else a fresh one; it is echoed back
either way. An HTTP client that goes away cancels its request at once (the handler is
cancelled, and the engine sends the node its cancel), streaming or not.

Authentication: with ``api_keys`` configured, ``Authorization: Bearer <key>`` must name a
key, whose tenant becomes ``tenant_id``; otherwise 401. Every error is OpenAI-shaped
(``gateway.openai_errors``). Replies carry ``X-Fed-Request-Id``, and (non-streaming)
``X-Fed-Served-By`` / ``X-Fed-Attempts``; a stream carries them in its last event's
``fedgate`` object, since HTTP headers leave before the first token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from gateway import openapi, serving
from gateway.local import LocalClient
from gateway.openai_endpoints import ATTEMPTS, REQUEST_ID, SERVED_BY, TENANT, Endpoints
from gateway.openai_errors import HttpError, error_response

if TYPE_CHECKING:
    from gateway.service import GatewayService

__all__ = ["ATTEMPTS", "REQUEST_ID", "SERVED_BY", "TENANT", "FrontDoor", "Handler"]

log = logging.getLogger("fedgate.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FrontDoor(Endpoints):
    """The HTTP server; one per gateway process, owned by ``gateway.main``."""

    def __init__(self, service: GatewayService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.port = 0
        """The bound port, once started (the OS's choice when asked for 0)."""
        cfg = service.config
        self.api_keys = dict(cfg.api_keys)
        self.client = LocalClient(service.engine, service.subjects)
        # aiohttp refuses (413) bodies past this before we read them; the exact limit is
        # the NATS size of what we publish (``_check_size``), whitespace being free.
        self.app = web.Application(
            middlewares=[self._errors], client_max_size=2 * cfg.max_payload_bytes + 65_536
        )
        self.app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat),
                web.post("/v1/completions", self.completions),
                web.post("/v1/embeddings", self.embeddings),
                web.get("/openapi.json", self.openapi),
            ]
        )
        self._openapi = msgspec.json.encode(openapi.document())
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve (``OSError`` when the port is taken)."""
        # handler_cancellation: a client that disconnects cancels its handler, which
        # cancels its request (LocalClient: the engine cancels the node's job).
        self._runner, self.port = await serving.serve(
            self.app, self.host, self.requested_port, shutdown_timeout=5.0,
            handler_cancellation=True, max_line_size=serving.MAX_LINE_BYTES,
            max_field_size=serving.MAX_LINE_BYTES,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop accepting, let open requests end (bounded), close (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.client.close()

    # -- plumbing -------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate first; answer every failure as an OpenAI error, never a traceback
        page; a client that went away is a quiet line."""
        try:
            serving.check_headers(request)
            tenant = self._tenant(request)
            if tenant is not None:
                request[TENANT] = tenant
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.message, exc.code, exc.param)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                return error_response(
                    413,
                    f"request body too large: a request may put at most {self.max_body} bytes "
                    "on NATS, and bodies over twice that are refused unread",
                    "too_large",
                )
            return error_response(exc.status, exc.reason, exc.reason.lower().replace(" ", "_"))
        except asyncio.CancelledError:
            log.info("client went away: %s %s (request cancelled)", request.method, request.path)
            raise
        except ConnectionResetError:  # a write to a closed connection: nobody to answer
            log.info("client went away: %s %s", request.method, request.path)
            return web.Response(status=499)
        except Exception as exc:
            log.exception("front door failed on %s %s", request.method, request.path)
            return error_response(500, f"internal error: {type(exc).__name__}", "internal")

    def _tenant(self, request: web.Request) -> str | None:
        if not self.api_keys:
            return None
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        tenant = self.api_keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise HttpError(401, "missing or unknown API key", "invalid_api_key")
        return tenant
