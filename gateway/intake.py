"""What the front door takes from an HTTP request, checked before anything reaches NATS.

The body (a JSON object, checked against its schema), the headers it carries onto NATS
(``traceparent``/``tracestate``, W3C-valid or a ``400``) or echoes (``X-Request-Id``,
never used as the NATS request id), and the size of the NATS request it becomes (a
``413`` past the server's ``max_payload`` less the dispatch envelope).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from gateway import openai_schema as schema
from gateway.catalog import NodeInfo
from gateway.openai_errors import HttpError
from gateway.wire import ENVELOPE_BYTES, max_body
from shared import headers as h
from shared import messages as m
from shared.client import FedClient

__all__ = [
    "CLIENT_REQUEST_ID", "ENVELOPE_BYTES", "MAX_TTFT_HEADER", "capability", "check_size",
    "checked", "fields", "forwarded", "headers", "max_body", "read_json", "split_chat",
]  # fmt: skip

CLIENT_REQUEST_ID = "X-Request-Id"
MAX_TTFT_HEADER = "x-fedgate-max-ttft-ms"
"""The time-to-first-token SLO in ms (``qos.max_ttft_ms``; the header wins over the body)."""

_TRACEPARENT = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$"
)
"""W3C trace context: version (not ff), trace id, parent id (neither all zeros), flags."""
_PRINTABLE = re.compile(r"^[\x20-\x7e]{1,512}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""A client's X-Request-Id usable as the NATS request id (the contract's alphabet)."""
_decoder = msgspec.json.Decoder()


async def read_json(request: web.Request) -> tuple[dict[str, Any], int]:
    """The JSON object of the body, and its size in bytes."""
    raw = await request.read()
    if not raw.strip():
        raise HttpError(400, "the request body is empty: a JSON object is expected", "bad_request")
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise HttpError(400, f"body is not JSON: {exc}", "bad_request") from exc
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object", "bad_request")
    return body, len(raw)


def checked(raw: dict[str, Any], kind: type[schema.T]) -> schema.T:
    """``raw`` as ``kind``, or a ``400`` naming the parameter at fault."""
    try:
        return schema.check(raw, kind)
    except schema.Invalid as exc:
        raise HttpError(400, exc.message, "bad_request", exc.param) from None


def forwarded(raw: dict[str, Any], kind: type[schema.Request]) -> dict[str, Any]:
    """The OpenAI parameters of ``raw`` that travel in ``params``, as written (null = unset)."""
    return {k: raw[k] for k in schema.FORWARDED[kind] if raw.get(k) is not None}


def split_chat(messages: list[Any]) -> tuple[str, list[Any], list[list[int]]]:
    """A chat sent once: its string contents joined by newlines (the ``input`` that nodes
    without a chat format continue), the messages with those contents left empty, and
    the ``[message index, start, end]`` spans of ``input`` that refill them
    (``params.input_spans``; docs/protocol.md)."""
    parts: list[str] = []
    spans: list[list[int]] = []
    out: list[Any] = []
    at = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            if parts:
                at += 1  # the newline between two contents
            spans.append([i, at, at + len(content)])
            parts.append(content)
            at += len(content)
            message = {**message, "content": ""}
        out.append(message)
    return "\n".join(parts), out, spans


def fields(headers: Mapping[str, str], req: schema.Request, tenant: str | None) -> dict[str, Any]:
    """The NATS request fields common to every endpoint. The request id is the client's
    ``X-Request-Id`` when it is a valid one — an identity within the caller's tenant only
    (docs/protocol.md, "Request identity"): another API key's requests never collide with
    it — else a fresh one. Without API keys the tenant is ``ANONYMOUS_HTTP_TENANT``, which
    no NATS caller may claim: HTTP ids never meet untenanted NATS callers'.
    ``x-fedgate-max-ttft-ms`` sets ``qos.max_ttft_ms`` (a ``400`` unless whole
    milliseconds)."""
    given = headers.get(CLIENT_REQUEST_ID, "")
    out: dict[str, Any] = {
        "request_id": given if _REQUEST_ID.match(given) else secrets.token_hex(8),
        "model": req.model,
        "tenant_id": m.ANONYMOUS_HTTP_TENANT if tenant is None else tenant,
    }
    qos = req.qos
    slo = headers.get(MAX_TTFT_HEADER)
    if slo is not None:
        if not slo.isdigit() or not 1 <= int(slo) <= 86_400_000:
            raise HttpError(
                400, f"{MAX_TTFT_HEADER} must be whole milliseconds, 1 to 86400000",
                "bad_request", MAX_TTFT_HEADER,
            )  # fmt: skip
        qos = msgspec.structs.replace(qos or m.DEFAULT_QOS, max_ttft_ms=int(slo))
    if qos is not None:
        out["qos"] = qos
    if req.timeout_ms is not None:
        out["timeout_ms"] = req.timeout_ms
    return out


def capability(model: str, nodes: Iterable[NodeInfo]) -> str:
    """``code`` for a model only served for code, else ``generate``."""
    caps: set[str] = set()
    for node in nodes:
        caps |= node.models.get(model, frozenset())
    return "code" if "code" in caps and "generate" not in caps else "generate"


def headers(request: web.Request) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The trace headers to carry onto NATS, and the ones to echo; 400 when invalid."""
    hdrs = request.headers
    trace: dict[str, str] = {}
    parent = hdrs.get(h.TRACEPARENT)
    if parent is not None:
        if not _TRACEPARENT.match(parent):
            raise HttpError(400, "invalid traceparent header", "bad_request", h.TRACEPARENT)
        trace[h.TRACEPARENT] = parent
        state = hdrs.get(h.TRACESTATE)
        if state is not None:
            if not _PRINTABLE.match(state):
                raise HttpError(400, "invalid tracestate header", "bad_request", h.TRACESTATE)
            trace[h.TRACESTATE] = state
    echo: dict[str, str] = {}
    rid = hdrs.get(CLIENT_REQUEST_ID)
    if rid is not None:
        if not _PRINTABLE.match(rid) or len(rid) > 256:
            raise HttpError(
                400, "X-Request-Id must be 1-256 printable characters", "bad_request",
                CLIENT_REQUEST_ID,
            )  # fmt: skip
        echo[CLIENT_REQUEST_ID] = rid
    return trace or None, echo


def check_size(size: int, limit: int, text: str, fields: dict[str, Any]) -> None:
    """A ``413`` unless the NATS request for an HTTP body of ``size`` bytes fits ``limit``
    (measured exactly only when it might not: re-encoding never doubles a JSON body)."""
    if size <= limit // 2:
        return
    nats_size = len(m.encode(FedClient.build_request(text, **fields)))
    if nats_size > limit:
        raise HttpError(
            413,
            f"request too large: {nats_size} bytes on NATS, the limit is {limit} bytes "
            f"(the NATS server's max_payload less {ENVELOPE_BYTES} for the dispatch)",
            "too_large",
        )
