"""The OpenAI request bodies the front door accepts, as msgspec Structs (one source).

Each endpoint's body is checked against its Struct (types, ranges, required fields, the
message roles and content parts, tools) before anything reaches NATS; the same Structs
generate the front door's OpenAPI document (``gateway.openapi``). A body field that is
not in the Struct is refused with a ``400`` naming it: either an OpenAI parameter this
gateway does not carry (``REFUSED`` says why) or an unknown one. Nothing is dropped in
silence. Inside messages and tools, unknown keys are let through: what passes the check
is forwarded as the caller wrote it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from shared.messages import QoS

T = TypeVar("T")

Text = Annotated[str, Meta(max_length=256)]
"""A short client-chosen string copied onto NATS (model names, ``user``)."""
Model = Annotated[str, Meta(min_length=1, max_length=256)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
TokenBudget = Annotated[int, Meta(ge=1, le=10_000_000)]
Stop = str | Annotated[list[str], Meta(max_length=4)]
Capability = Annotated[str, Meta(pattern=r"^[a-z0-9_-]{1,64}$")]
TimeoutMs = Annotated[int, Meta(ge=1, le=86_400_000)]
OneChoice = Annotated[int, Meta(ge=1, le=1)]


class _Part(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """One part of a message's content (tagged by ``type``)."""


class TextPart(_Part, frozen=True, kw_only=True, tag="text"):
    text: str


class ImageURL(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part, frozen=True, kw_only=True, tag="image_url"):
    image_url: ImageURL


class InputAudio(msgspec.Struct, frozen=True, kw_only=True):
    data: str
    format: str


class AudioPart(_Part, frozen=True, kw_only=True, tag="input_audio"):
    input_audio: InputAudio


class RefusalPart(_Part, frozen=True, kw_only=True, tag="refusal"):
    refusal: str


class Function(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call an assistant made (in the history sent back)."""

    id: str
    type: Literal["function"] = "function"
    function: Function


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="role"):
    """One chat message (tagged by ``role``)."""

    name: str | None = None


class SystemMessage(_Message, frozen=True, kw_only=True, tag="system"):
    content: str | list[TextPart]


class DeveloperMessage(_Message, frozen=True, kw_only=True, tag="developer"):
    content: str | list[TextPart]


class UserMessage(_Message, frozen=True, kw_only=True, tag="user"):
    content: str | list[TextPart | ImagePart | AudioPart]


class AssistantMessage(_Message, frozen=True, kw_only=True, tag="assistant"):
    content: str | list[TextPart | RefusalPart] | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ToolMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(msgspec.Struct, frozen=True, kw_only=True):
    name: str


class NamedToolChoice(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["function"]
    function: FunctionName


class _Format(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """``response_format`` (tagged by ``type``)."""


class TextFormat(_Format, frozen=True, kw_only=True, tag="text"):
    pass


class JsonObjectFormat(_Format, frozen=True, kw_only=True, tag="json_object"):
    pass


class JsonSchema(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class JsonSchemaFormat(_Format, frozen=True, kw_only=True, tag="json_schema"):
    json_schema: JsonSchema


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    include_usage: bool | None = None


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields of every endpoint: the model and fedgate's own extensions."""

    model: Model | None = None
    """The model to route on (any node serving it); absent = any node of the capability."""
    user: Text | None = None
    qos: QoS | None = None
    """fedgate: quality of service (privacy, region, latency...), see docs/protocol.md."""
    timeout_ms: TimeoutMs | None = None
    """fedgate: the request's deadline in milliseconds."""
    capability: Capability | None = None
    """fedgate: the capability to ask for (default ``generate``, or ``embed``)."""


class _Generation(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sampling fields shared by chat and text completions."""

    max_tokens: TokenBudget | None = None
    n: OneChoice | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: int | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None


class ChatRequest(_Generation, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Meta(min_length=1)]
    max_completion_tokens: TokenBudget | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None


class CompletionRequest(_Generation, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)] = ""
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    suffix: str | None = None
    echo: Literal[False] | None = None
    best_of: OneChoice | None = None


class EmbeddingRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/embeddings``."""

    input: str | Annotated[list[str], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1, le=65_536)] | None = None


FORWARDED: dict[type[Request], tuple[str, ...]] = {
    ChatRequest: (
        "max_tokens", "max_completion_tokens", "stop", "seed", "temperature", "top_p",
        "presence_penalty", "frequency_penalty", "logit_bias", "user", "tools",
        "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs",
    ),
    CompletionRequest: (
        "max_tokens", "stop", "seed", "temperature", "top_p", "presence_penalty",
        "frequency_penalty", "logit_bias", "user", "logprobs", "suffix",
    ),
    EmbeddingRequest: ("user", "dimensions"),
}  # fmt: skip
"""Body fields copied, as the caller wrote them, into the NATS request's ``params``."""

REFUSED = {
    "functions": "deprecated by OpenAI: use `tools`",
    "function_call": "deprecated by OpenAI: use `tool_choice`",
    "audio": "audio output is not carried by this gateway",
    "modalities": "only text output is carried by this gateway",
    "prediction": "predicted outputs are not carried by this gateway",
    "store": "this gateway stores no completions",
    "metadata": "this gateway stores no completions",
    "service_tier": "nodes have no service tiers; use `qos`",
    "reasoning_effort": "not carried by this gateway",
    "web_search_options": "not carried by this gateway",
}
"""OpenAI parameters the front door refuses, and why."""


class Invalid(Exception):
    """A body that breaks its schema: the message and the parameter at fault."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def check(raw: dict[str, Any], schema: type[T]) -> T:
    """``raw`` as ``schema``, or ``Invalid`` naming the parameter at fault."""
    fields = schema.__struct_fields__  # type: ignore[attr-defined]
    for key in raw:
        if key not in fields:
            why = REFUSED.get(key)
            if why is not None:
                raise Invalid(f"parameter `{key}` is not supported: {why}", key)
            raise Invalid(f"unknown parameter `{key}`", key)
    try:
        checked = msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        text, _, at = str(exc).partition(" - at `$")
        path = at.rstrip("`").lstrip(".")
        missing = re.search(r"missing required field `([^`]+)`", text)
        if missing:
            path = f"{path}.{missing[1]}" if path else missing[1]
        raise Invalid(f"invalid `{path or 'body'}`: {text}", path or None) from None
    _rules(checked)
    return checked


def _rules(req: object) -> None:
    """The rules between fields that OpenAI enforces (a ``400``, as OpenAI answers)."""
    if isinstance(req, ChatRequest | CompletionRequest):
        if req.stream_options is not None and not req.stream:
            raise Invalid(
                "`stream_options` is only allowed when `stream` is true", "stream_options"
            )
    if isinstance(req, ChatRequest):
        if req.top_logprobs is not None and not req.logprobs:
            raise Invalid("`top_logprobs` needs `logprobs: true`", "top_logprobs")
        if not req.tools:
            for name in ("tool_choice", "parallel_tool_calls"):
                if getattr(req, name) is not None:
                    raise Invalid(f"`{name}` is only allowed when `tools` are given", name)
