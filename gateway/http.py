"""The OpenAI-compatible HTTP front door of a gateway (``fedgate gateway --http-port N``).

    GET  /v1/models            the models the gateway's catalog holds
    POST /v1/chat/completions  -> infer.generate (or infer.code), stream or not
    POST /v1/completions       -> infer.generate (or infer.code), stream or not
    POST /v1/embeddings        -> infer.embed, one request per input
    GET  /openapi.json         the OpenAPI 3.1 document of these endpoints

Each HTTP request is checked against its schema (``gateway.openai_schema``: an unknown
or unsupported parameter, or a bad value, is a ``400`` naming it), then becomes one
request of the NATS contract, handed in-process to this gateway's engine
(``gateway.local.LocalClient``: no NATS hop into its own gateway; only the dispatch and
the node's replies travel over NATS). A chat's text travels once: in ``input`` (its
contents, one per line, what a node without a chat format continues), the rest of the
messages in ``params.messages`` with ``params.input_spans`` to put the text back
(``intake.split_chat``); the OpenAI parameters travel in ``params`` as the caller wrote
them.

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
import base64
import logging
from array import array
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from gateway import intake, openapi, serving, sse
from gateway import openai_schema as schema
from gateway.local import LocalClient
from gateway.openai_errors import HttpError, error_response, fed_error_response
from gateway.openai_reply import Reply
from shared import errors

if TYPE_CHECKING:
    from gateway.service import GatewayService

log = logging.getLogger("fedgate.http")

SERVED_BY = "X-Fed-Served-By"
ATTEMPTS = "X-Fed-Attempts"
REQUEST_ID = "X-Fed-Request-Id"
TENANT = web.RequestKey("fedgate.tenant", str)
"""The authenticated tenant (absent without API keys), set by the middleware."""
_encoder = msgspec.json.Encoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FrontDoor:
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
        self._openapi = _encoder.encode(openapi.document())
        self._runner: web.AppRunner | None = None

    @property
    def max_body(self) -> int:
        """Largest NATS request body (``intake.max_body``; the server may change on a
        reconnect)."""
        server = getattr(self.service.nc, "max_payload", 0) or 0
        return intake.max_body(self.service.config.max_payload_bytes, server)

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

    def _fields(self, request: web.Request, req: schema.Request) -> dict[str, Any]:
        return intake.fields(request.headers, req, request.get(TENANT))

    def _capability(self, req: schema.Request, default: str) -> str:
        """``capability``, or ``code`` for a model only served for code, or ``default``."""
        if req.capability or default != "generate" or not req.model:
            return req.capability or default
        return intake.capability(req.model, self.service.catalog.nodes())

    # -- endpoints ------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        """``GET /openapi.json``."""
        return web.Response(body=self._openapi, content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: every model some live node serves."""
        owners: dict[str, set[str]] = {}
        for node in self.service.catalog.nodes():
            for model, caps in node.models.items():
                owners.setdefault(model, set()).update(caps)
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "fedgate",
             "capabilities": sorted(caps)}
            for model, caps in sorted(owners.items())
        ]  # fmt: skip
        return web.Response(
            body=_encoder.encode({"object": "list", "data": data}), content_type="application/json"
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        raw, size = await intake.read_json(request)
        req = intake.checked(raw, schema.ChatRequest)
        params = intake.forwarded(raw, schema.ChatRequest)
        budget = req.max_completion_tokens or req.max_tokens
        if budget is not None:
            params["max_tokens"] = budget
        text, params["messages"], spans = intake.split_chat(raw["messages"])
        if spans:
            params["input_spans"] = spans
        return await self._generate(request, req, size, text, params, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        raw, size = await intake.read_json(request)
        req = intake.checked(raw, schema.CompletionRequest)
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        params = intake.forwarded(raw, schema.CompletionRequest)
        return await self._generate(request, req, size, prompt, params, chat=False)

    async def _generate(
        self,
        request: web.Request,
        req: schema.ChatRequest | schema.CompletionRequest,
        size: int,
        prompt: str,
        params: dict[str, Any],
        *,
        chat: bool,
    ) -> web.StreamResponse:
        trace, echo = intake.headers(request)
        fields = self._fields(request, req)
        fields["params"] = params
        stream = bool(req.stream)
        intake.check_size(size, self.max_body, prompt, {**fields, "stream": stream})
        capability = self._capability(req, "generate")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        reply = Reply(chat, fields["request_id"], req.model or "", include_usage=include_usage)
        if stream:
            async with self.client.stream(capability, prompt, headers=trace, **fields) as s:
                return await sse.relay(request, s, reply, fields["request_id"], req.model, echo)
        try:
            answer = await self.client.infer(capability, prompt, headers=trace, **fields)
        except errors.FedError as exc:
            return fed_error_response(exc, req.model)
        return web.Response(
            body=_encoder.encode(reply.complete(answer.result)),
            content_type="application/json",
            headers={
                SERVED_BY: answer.served_by,
                ATTEMPTS: str(answer.attempts),
                REQUEST_ID: fields["request_id"],
                **echo,
            },
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: one ``infer.embed`` request per input, concurrently."""
        raw, size = await intake.read_json(request)
        req = intake.checked(raw, schema.EmbeddingRequest)
        inputs = [req.input] if isinstance(req.input, str) else req.input
        trace, echo = intake.headers(request)
        fields = self._fields(request, req)
        fields["params"] = intake.forwarded(raw, schema.EmbeddingRequest)
        base_id = fields.pop("request_id")
        longest = max(inputs, key=len)
        intake.check_size(size, self.max_body, longest, {**fields, "request_id": base_id})
        capability = req.capability or "embed"
        try:
            answers = await asyncio.gather(
                *(
                    self.client.infer(
                        capability,
                        text,
                        headers=trace,
                        request_id=base_id if len(inputs) == 1 else f"{base_id}-{i}",
                        **fields,
                    )
                    for i, text in enumerate(inputs)
                )
            )
        except errors.FedError as exc:
            return fed_error_response(exc, req.model)
        as_base64 = req.encoding_format == "base64"
        data = []
        tokens = 0
        for i, answer in enumerate(answers):
            vector = answer.result.embedding or []
            tokens += answer.result.prompt_tokens or answer.result.tokens
            encoded: Any = (
                base64.b64encode(array("f", vector).tobytes()).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        body = {
            "object": "list",
            "data": data,
            "model": answers[0].result.model or req.model or "",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(
            body=_encoder.encode(body),
            content_type="application/json",
            headers={
                SERVED_BY: ",".join(dict.fromkeys(a.served_by for a in answers)),
                ATTEMPTS: str(max(a.attempts for a in answers)),
                REQUEST_ID: base_id,
                **echo,
            },
        )
