"""The backend seam: one async-generator method turns a job into pieces of output.

A backend never sees NATS. The node gives it a ``Job`` (capability, model, request,
and where to resume) and relays what it yields: text pieces for a stream, or one
piece with an ``embedding``. Raising ``BackendError`` ends the job with that error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    def max_tokens(self) -> int:
        """The whole output's token budget (resumed part included); default 10."""
        value = self.request.params.get("max_tokens", 10)
        return value if isinstance(value, int) and value > 0 else 10


@dataclass(slots=True)
class Piece:
    """Output produced by a backend: a text piece of ``tokens`` tokens, or an embedding."""

    text: str = ""
    tokens: int = 1
    embedding: list[float] | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BackendError(Exception):
    """A backend failure; ``code``/``kind`` follow the contract's error table."""

    def __init__(self, message: str, code: int = 500, kind: str = "internal") -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


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
