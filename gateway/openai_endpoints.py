"""The OpenAI endpoints of the front door (gateway/http.py): each HTTP request checked
against its schema (``gateway.openai_schema``: an unknown or unsupported parameter, or a
bad value, is a ``400`` naming it), made one request of the NATS contract (or one per
input, for embeddings), handed in-process to this gateway's engine
(``gateway.local.LocalClient``), and its answer written back OpenAI-shaped.

A chat's text travels once: in ``input`` (its contents, one per line, what a node
without a chat format continues), the rest of the messages in ``params.messages`` with
``params.input_spans`` to put the text back (``intake.split_chat``); the OpenAI
parameters travel in ``params`` as the caller wrote them. A request whose NATS body
would not fit ``max_body`` is a ``413``.

``Endpoints`` is a mixin of ``gateway.http.FrontDoor`` (it uses the door's service and
local client); the names here are re-exported by ``gateway.http``.
"""

from __future__ import annotations

import asyncio
import base64
from array import array
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from gateway import intake, sse
from gateway import openai_schema as schema
from gateway.openai_errors import fed_error_response
from gateway.openai_reply import Reply
from shared import errors

if TYPE_CHECKING:
    from gateway.local import LocalClient
    from gateway.service import GatewayService

SERVED_BY = "X-Fed-Served-By"
ATTEMPTS = "X-Fed-Attempts"
REQUEST_ID = "X-Fed-Request-Id"
TENANT = web.RequestKey("fedgate.tenant", str)
"""The authenticated tenant (absent without API keys), set by the middleware of
gateway/http.py."""
_encoder = msgspec.json.Encoder()


class Endpoints:
    """The endpoints of the front door (mixed into ``gateway.http.FrontDoor``)."""

    service: GatewayService
    client: LocalClient
    _openapi: bytes
    """``GET /openapi.json``'s body, encoded once."""

    @property
    def max_body(self) -> int:
        """Largest NATS request body (``intake.max_body``; the server may change on a
        reconnect)."""
        server = getattr(self.service.nc, "max_payload", 0) or 0
        return intake.max_body(self.service.config.max_payload_bytes, server)

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
