"""The OpenAI-compatible HTTP front door of a gateway (``fedgate gateway --http-port N``).

    GET  /v1/models            the models the gateway's catalog holds
    POST /v1/chat/completions  -> infer.generate (or infer.code), stream or not
    POST /v1/completions       -> infer.generate (or infer.code), stream or not
    POST /v1/embeddings        -> infer.embed, one request per input

Each HTTP request becomes a request of the NATS contract, published on
``infer.<capability>`` through a ``FedClient`` on the gateway's own connection, so any
gateway of the queue group may serve it. Chat messages become the prompt (their
contents joined by newlines, for backends without a chat format) and travel untouched
in ``params.messages`` for the backends that have one (openai, llama).

Authentication: with ``api_keys`` configured, ``Authorization: Bearer <key>`` must name a
key, whose tenant becomes ``tenant_id``; otherwise 401. Errors are OpenAI-shaped,
``{"error": {"message", "type", "code"}}``, with the contract's code as HTTP status and
``Fed-Error`` as ``code`` (``model_not_found`` for an unknown model). A ``traceparent``
header is carried onto NATS. Replies carry ``X-Fed-Request-Id``, and (non-streaming)
``X-Fed-Served-By`` / ``X-Fed-Attempts``; a stream carries them in its last event's
``fedgate`` object, since HTTP headers leave before the first token.

fedgate extensions in a request body (``extra_body`` in the openai SDK): ``qos``,
``timeout_ms``, ``capability``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import socket
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from shared import errors
from shared import headers as h
from shared.client import FedClient

if TYPE_CHECKING:
    from gateway.service import GatewayService

log = logging.getLogger("fedgate.http")

SERVED_BY = "X-Fed-Served-By"
ATTEMPTS = "X-Fed-Attempts"
REQUEST_ID = "X-Fed-Request-Id"

SAMPLING = ("max_tokens", "temperature", "top_p", "stop", "seed")
"""OpenAI request fields passed on in ``params``."""

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}
TENANT = "fedgate.tenant"
"""The authenticated tenant (None without API keys), set by the middleware."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """An error answered before anything reaches NATS (auth, malformed body)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def error_body(status: int, message: str, code: str) -> bytes:
    """The OpenAI error JSON."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _encoder.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    )


def error_response(status: int, message: str, code: str, **headers: str) -> web.Response:
    """An OpenAI-shaped error response."""
    return web.Response(
        status=status,
        body=error_body(status, message, code),
        content_type="application/json",
        headers=headers,
    )


def fed_error_response(exc: errors.FedError, model: str | None) -> web.Response:
    """A contract error as an OpenAI error (``model_not_found`` for an unknown model)."""
    code = exc.kind
    message = exc.message
    if exc.code == 404 and model:
        code = "model_not_found"
        message = f"The model `{model}` does not exist or no node serves it ({exc.message})"
    return error_response(exc.code, message, code)


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The prompt for backends without a chat format: the contents, one per line."""
    return "\n".join(m["content"] for m in messages if m["content"])


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise HttpError(400, "'messages' must be a non-empty list", "bad_request")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise HttpError(400, "each message needs a 'role' and a 'content'", "bad_request")
        out.append({"role": item["role"], "content": _text_of(item.get("content"))})
    return out


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
        self.client = FedClient(
            service.nc, subjects=service.subjects, timeout_s=cfg.request_timeout_s, retries=1
        )
        self.app = web.Application(middlewares=[self._errors])
        self.app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat),
                web.post("/v1/completions", self.completions),
                web.post("/v1/embeddings", self.embeddings),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await self._runner.setup()
        # Bind the socket ourselves so that port 0 (the OS's choice) can be read back.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stop accepting, let open requests end (bounded), close (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.client.close()

    # -- plumbing -------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate first; answer every failure as an OpenAI error."""
        try:
            request[TENANT] = self._tenant(request)
            return await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.message, exc.code)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason, exc.reason.lower().replace(" ", "_"))

    def _tenant(self, request: web.Request) -> str | None:
        if not self.api_keys:
            return None
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        tenant = self.api_keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise HttpError(401, "missing or unknown API key", "invalid_api_key")
        return tenant

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = _decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            raise HttpError(400, f"body is not JSON: {exc}", "bad_request") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object", "bad_request")
        return body

    def _fields(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        """The NATS request fields common to every endpoint."""
        tenant = request.get(TENANT)
        rid = request.headers.get("X-Request-Id", "")
        fields: dict[str, Any] = {
            "request_id": rid if _REQUEST_ID.match(rid) else secrets.token_hex(8),
            "model": body.get("model") or None,
            "tenant_id": tenant,
        }
        if isinstance(body.get("qos"), dict):
            fields["qos"] = body["qos"]
        if isinstance(body.get("timeout_ms"), int):
            fields["timeout_ms"] = body["timeout_ms"]
        return fields

    @staticmethod
    def _trace(request: web.Request) -> dict[str, str] | None:
        trace = {
            k: request.headers[k] for k in (h.TRACEPARENT, h.TRACESTATE) if k in request.headers
        }
        return trace or None

    def _capability(self, body: dict[str, Any], default: str) -> str:
        """``body.capability``, or ``code`` for a model only served for code, or ``default``."""
        explicit = body.get("capability")
        if isinstance(explicit, str) and explicit:
            return explicit
        model = body.get("model")
        if default != "generate" or not model:
            return default
        caps: set[str] = set()
        for node in self.service.catalog.nodes():
            caps |= node.models.get(model, frozenset())
        return "code" if "code" in caps and "generate" not in caps else default

    @staticmethod
    def _params(body: dict[str, Any]) -> dict[str, Any]:
        params = {k: body[k] for k in SAMPLING if body.get(k) is not None}
        if body.get("max_completion_tokens") is not None:
            params["max_tokens"] = body["max_completion_tokens"]
        if body.get("n", 1) != 1:
            raise HttpError(400, "only n=1 is supported", "bad_request")
        return params

    # -- endpoints ------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: every model some live node serves."""
        owners: dict[str, set[str]] = {}
        for node in self.service.catalog.nodes():
            for model, caps in node.models.items():
                owners.setdefault(model, set()).update(caps)
        data = [
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "fedgate",
                "capabilities": sorted(caps),
            }
            for model, caps in sorted(owners.items())
        ]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        body = await self._body(request)
        messages = _messages(body)
        params = self._params(body)
        params["messages"] = messages
        return await self._generate(request, body, prompt_of(messages), params, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        body = await self._body(request)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise HttpError(400, "'prompt' must be a string", "bad_request")
        return await self._generate(request, body, prompt, self._params(body), chat=False)

    async def _generate(
        self,
        request: web.Request,
        body: dict[str, Any],
        prompt: str,
        params: dict[str, Any],
        *,
        chat: bool,
    ) -> web.StreamResponse:
        fields = self._fields(request, body)
        fields["params"] = params
        capability = self._capability(body, "generate")
        shape = _Shape(chat, fields["request_id"], body.get("model") or "")
        trace = self._trace(request)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(
                request, shape, capability, prompt, fields, trace, include_usage
            )
        try:
            answer = await self.client.infer(capability, prompt, headers=trace, **fields)
        except errors.FedError as exc:
            return fed_error_response(exc, fields["model"])
        result = answer.result
        return web.Response(
            body=_encoder.encode(
                shape.complete(result.model, result.output, result.finish_reason, result.tokens)
            ),
            content_type="application/json",
            headers={
                SERVED_BY: answer.served_by,
                ATTEMPTS: str(answer.attempts),
                REQUEST_ID: fields["request_id"],
            },
        )

    async def _stream(
        self,
        request: web.Request,
        shape: _Shape,
        capability: str,
        prompt: str,
        fields: dict[str, Any],
        trace: dict[str, str] | None,
        include_usage: bool,
    ) -> web.StreamResponse:
        async with self.client.stream(capability, prompt, headers=trace, **fields) as stream:
            chunks = aiter(stream)
            try:  # wait for the first chunk: an early error is still an HTTP status
                first = await anext(chunks, None)
            except errors.FedError as exc:
                return fed_error_response(exc, fields["model"])
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    REQUEST_ID: fields["request_id"],
                }
            )
            await response.prepare(request)
            if shape.chat:
                await response.write(_event(shape.delta("", role=True)))
            try:
                if first is not None:
                    await response.write(_event(shape.delta(first.text)))
                    async for chunk in chunks:
                        await response.write(_event(shape.delta(chunk.text)))
            except errors.FedError as exc:  # after output: the error travels in the stream
                await response.write(
                    b"data: " + error_body(exc.code, exc.message, exc.kind) + b"\n\n"
                )
                await response.write(b"data: [DONE]\n\n")
                return response
            final = shape.delta(None, finish=stream.finish_reason or "stop")
            final["fedgate"] = {
                "served_by": stream.served_by,
                "attempts": stream.attempts,
                "tokens": stream.tokens,
                "request_id": fields["request_id"],
            }
            if include_usage:
                final["usage"] = _usage(stream.tokens)
            await response.write(_event(final))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: one ``infer.embed`` request per input, concurrently."""
        body = await self._body(request)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            raise HttpError(400, "'input' must be a string or a list of strings", "bad_request")
        fields = self._fields(request, body)
        base_id = fields.pop("request_id")
        trace = self._trace(request)
        as_base64 = body.get("encoding_format") == "base64"
        try:
            answers = await asyncio.gather(
                *(
                    self.client.infer(
                        "embed",
                        text,
                        headers=trace,
                        request_id=base_id if len(inputs) == 1 else f"{base_id}-{i}",
                        **fields,
                    )
                    for i, text in enumerate(inputs)
                )
            )
        except errors.FedError as exc:
            return fed_error_response(exc, fields["model"])
        data = []
        tokens = 0
        for i, answer in enumerate(answers):
            vector = answer.result.embedding or []
            tokens += answer.result.tokens
            encoded: Any = (
                base64.b64encode(array("f", vector).tobytes()).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        model = answers[0].result.model if answers else (fields["model"] or "")
        return web.Response(
            body=_encoder.encode(
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": _usage(tokens, prompt=True),
                }
            ),
            content_type="application/json",
            headers={
                SERVED_BY: ",".join(dict.fromkeys(a.served_by for a in answers)),
                ATTEMPTS: str(max(a.attempts for a in answers)),
                REQUEST_ID: base_id,
            },
        )


class _Shape:
    """Builds the OpenAI objects of one chat or text completion."""

    __slots__ = ("chat", "created", "id", "model")

    def __init__(self, chat: bool, request_id: str, model: str) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.model = model

    def delta(
        self, text: str | None, *, role: bool = False, finish: str | None = None
    ) -> dict[str, Any]:
        """One streamed event."""
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def complete(self, model: str, output: str, finish: str, tokens: int) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": output},
                "finish_reason": finish,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": output, "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": model or self.model,
            "choices": [choice],
            "usage": _usage(tokens),
        }


def _usage(tokens: int, *, prompt: bool = False) -> dict[str, int]:
    if prompt:
        return {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def _dumps(obj: Any) -> str:
    return _encoder.encode(obj).decode()
