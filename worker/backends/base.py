"""The backend seam: one async-generator method turns a job into pieces of output.

A backend never sees NATS. The node gives it a ``Job`` (capability, model, request,
and where to resume) and relays what it yields: text pieces (or tool-call deltas) for
a stream, or one piece with an ``embedding``. A backend fails by raising the matching
``shared.errors.FedError`` (``BadRequest`` for a request it cannot take,
``UpstreamError`` when its engine broke, ``Overloaded``, ``Timeout``,
``NodeUnavailable``...); the node answers with that error's headers. ``BackendError``
is the generic one (``500 internal``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from shared import errors
from shared.messages import InferRequest


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work for a backend."""

    capability: str
    model: str
    request: InferRequest
    resume_text: str = ""
    """Output already delivered to the caller (mid-stream failover): continue after it."""
    resume_tokens: int = 0
    """How many tokens ``resume_text`` holds."""

    @property
    def params(self) -> dict[str, Any]:
        """The request's backend parameters."""
        return self.request.params

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        """The chat in ``params.messages`` (OpenAI messages, as sent), or None."""
        messages = self.request.params.get("messages")
        return messages if isinstance(messages, list) and messages else None

    @property
    def prompt(self) -> str:
        """The plain prompt: ``input``, or for a chat the text of its messages, one per line
        (what a backend without a chat format continues)."""
        if self.request.input:
            return self.request.input
        messages = self.messages
        return prompt_of(messages) if messages else ""

    @property
    def max_tokens(self) -> int:
        """The whole output's token budget (resumed part included); default 10.

        Raises ``BadRequest`` when ``params.max_tokens`` is given but is not an integer
        of at least 1: a budget is never replaced in silence."""
        params = self.request.params
        key = "max_tokens"
        value = params.get(key)
        if value is None:
            return 10
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise errors.BadRequest(f"params.{key} must be an integer >= 1, got {value!r}")
        return value


def chat_from(request: InferRequest) -> InferRequest:
    """``request`` with its chat whole again: a chat whose string contents travel once, in
    ``input``, has ``params.input_spans`` (``[message index, start, end]`` of ``input``)
    to put them back into ``params.messages`` (docs/protocol.md); a chat sent with an
    empty ``input`` gets its text there. Anything else is returned as it is."""
    params = request.params
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return request
    spans = params.get("input_spans")
    if spans is not None:
        text = request.input
        messages = list(messages)
        try:
            for index, start, end in spans:
                messages[index] = {**messages[index], "content": text[start:end]}
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise errors.BadRequest(f"bad params.input_spans: {exc}") from exc
        rest = {k: v for k, v in params.items() if k != "input_spans"}
        return msgspec.structs.replace(request, params={**rest, "messages": messages})
    if not request.input:
        return msgspec.structs.replace(request, input=prompt_of(messages))
    return request


def text_of(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or the ``text`` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """A chat as a plain prompt: the text of each message, one per line."""
    texts = (text_of(m.get("content")) for m in messages if isinstance(m, dict))
    return "\n".join(t for t in texts if t)


@dataclass(slots=True)
class Piece:
    """Output produced by a backend: a text piece of ``tokens`` tokens, tool-call deltas,
    or an embedding. The last piece may carry the engine's own counts."""

    text: str = ""
    tokens: int = 1
    embedding: list[float] | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI tool-call deltas (concatenated by ``index``)."""
    logprobs: dict[str, Any] | None = None
    """OpenAI ``logprobs`` of this piece's tokens."""
    prompt_tokens: int | None = None
    """The engine's count of prompt tokens (usually on the last piece)."""
    completion_tokens: int | None = None
    """The engine's count of output tokens, replacing the sum of ``tokens`` (last piece)."""


class BackendError(errors.Internal):
    """A backend failure with no better kind: ``500 internal``, message kept as given."""

    def __init__(self, message: str = "") -> None:
        errors.FedError.__init__(self, message)


class Backend(Protocol):
    """What a node runs: ``stream(job)`` yields pieces until the output is complete."""

    def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Produce the output of ``job`` piece by piece."""
        ...


GenerateFn = Callable[[Job], AsyncIterator[str]] | Callable[[Job], Awaitable[str]]


class FunctionBackend:
    """Serve your own function as a node.

    ``fn(job)`` is an async generator yielding text pieces (one token each), or a
    coroutine returning the whole text. A resumed job must continue after
    ``job.resume_text``; a function that cannot resume should raise ``BackendError``
    when ``job.resume_tokens`` is non-zero.
    """

    def __init__(self, fn: GenerateFn) -> None:
        self._fn = fn

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Adapt the user's function to the backend protocol."""
        out = self._fn(job)
        if hasattr(out, "__aiter__"):
            async for text in out:
                if text:
                    yield Piece(text=text)
        else:
            text = await out
            if text:
                yield Piece(text=text)
