"""The OpenAPI 3.1 document of the front door (``GET /openapi.json``), built once.

Request bodies come from the Structs the front door validates against
(``gateway.openai_schema``); the answers are described by the Structs below, which
mirror what ``gateway.openai_reply`` and ``gateway.http`` write (the fuzz test checks
every answer against them).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway import openai_schema as schema


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the answer Structs (documentation only)."""


class ErrorDetail(_Out, frozen=True, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(_Out, frozen=True, kw_only=True):
    """Every error, whatever the status."""

    error: ErrorDetail


class Usage(_Out, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnswerMessage(_Out, frozen=True, kw_only=True):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[schema.ToolCall] | None = None


class ChatChoice(_Out, frozen=True, kw_only=True):
    index: int
    message: AnswerMessage
    finish_reason: str
    logprobs: dict[str, Any] | None


class ChatCompletion(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(_Out, frozen=True, kw_only=True):
    index: int
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None


class Completion(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Embedding(_Out, frozen=True, kw_only=True):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32 with ``encoding_format: base64``."""


class EmbeddingUsage(_Out, frozen=True, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Out, frozen=True, kw_only=True):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    capabilities: list[str]


class ModelList(_Out, frozen=True, kw_only=True):
    object: Literal["list"]
    data: list[Model]


_SSE = {
    "text/event-stream": {
        "schema": {"type": "string"},
        "description": "with `stream: true`: `data: <chunk JSON>` events, then `data: [DONE]`",
    }
}
_ERRORS = {
    str(status): {
        "description": why,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for status, why in (
        (400, "a malformed body, or an unknown or unsupported parameter (named in `param`)"),
        (401, "missing or unknown API key (when keys are configured)"),
        (403, "no node allowed by the privacy/residency policy serves it"),
        (404, "no node serves this model or capability"),
        (413, "the request does not fit the NATS server's max_payload"),
        (429, "every eligible node is at capacity (`Retry-After` when known)"),
        (500, "an internal error"),
        (502, "the node's engine failed, or a stream lost its node"),
        (503, "nodes serve it but none is available"),
        (504, "the deadline passed"),
    )
}


def _operation(summary: str, body: str | None, answer: str, stream: bool = False) -> Any:
    ok: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{answer}"}}
    }
    if stream:
        ok.update(_SSE)
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "the answer", "content": ok}, **_ERRORS},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    _, components = msgspec.json.schema_components(
        [
            schema.ChatRequest,
            schema.CompletionRequest,
            schema.EmbeddingRequest,
            Error,
            ChatCompletion,
            Completion,
            EmbeddingList,
            ModelList,
        ],
        ref_template="#/components/schemas/{name}",
    )
    bearer = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fedgate OpenAI-compatible front door",
            "version": "1",
            "description": "OpenAI's chat, completions, embeddings and models endpoints, "
            "served by the nodes of a fedgate federation (docs/llm.md).",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": _operation("A chat completion", "ChatRequest", "ChatCompletion", True)
            },
            "/v1/completions": {
                "post": _operation("A text completion", "CompletionRequest", "Completion", True)
            },
            "/v1/embeddings": {
                "post": _operation("Embeddings, one per input", "EmbeddingRequest", "EmbeddingList")
            },
            "/v1/models": {"get": _operation("The models live nodes serve", None, "ModelList")},
        },
        "components": {"schemas": components, "securitySchemes": bearer},
        "security": [{}, {"bearer": []}],
    }
