"""The OpenAI wire format as the openai backend speaks it: request bodies, streamed
events, and the SDK client that reads them.

- ``RESERVED``: ``params`` keys the backend sets itself; ``budget``: the output tokens
  still to ask for; ``chat_messages``: the chat to send, or None for a completion.
- ``choice_piece``: one streamed choice (a chat ``delta`` or a completion's ``text``,
  tool-call deltas, log-probabilities) as a ``Piece`` of 1 token; ``usage_count``: a
  token count of the upstream's ``usage``; ``pooled``: an embedding as one vector of
  floats (per-token vectors averaged).
- ``SDKClient``: ``AsyncOpenAI`` with an SSE decoder that drops blocks without data;
  ``tls_context``: the one TLS context the readiness probes share.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from openai import AsyncOpenAI
from openai._streaming import ServerSentEvent, SSEDecoder

from worker.backends.base import Job, Piece

RESERVED = frozenset(
    {"messages", "prompt", "input", "model", "stream", "stream_options", "n"}
    | {"max_tokens", "max_completion_tokens", "continue_final_message", "add_generation_prompt"}
)
"""``params`` keys the backend sets itself; every other key goes upstream as it is."""


def budget(job: Job, default: int) -> int:
    """Tokens still to produce: the whole-output ``max_tokens`` minus the resumed part."""
    value = job.params.get("max_tokens")
    total = (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )
    return total - job.resume_tokens


def pooled(embedding: Any) -> list[float]:
    """A sentence vector: as is, or the mean of per-token vectors (servers without pooling)."""
    if embedding and isinstance(embedding[0], list):
        width = len(embedding[0])
        return [sum(float(row[i]) for row in embedding) / len(embedding) for i in range(width)]
    return [float(v) for v in embedding]


def chat_messages(job: Job, plain_as_chat: bool) -> list[dict[str, Any]] | None:
    """The chat to send (a copy of ``params.messages``), or None for a plain completion."""
    messages = job.messages
    if messages is not None:
        return list(messages)
    if plain_as_chat:
        return [{"role": "user", "content": job.prompt}]
    return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One default TLS context for the readiness probes' short-lived clients: building
    one loads the CA bundle, ~80 ms of CPU here, which a probe per second on an idle
    worker paid every time (cProfile of a worker: 22 loads, 1.8 s, in 45 s)."""
    return ssl.create_default_context()


class _Decoder(SSEDecoder):
    """The SDK's decoder, less one deviation from the SSE spec: a block without ``data``
    lines dispatches nothing (the SDK would hand on an empty event once an ``id:`` was
    seen, which is not JSON)."""

    def decode(self, line: str) -> ServerSentEvent | None:
        sse = super().decode(line)
        return sse if sse is None or sse.data else None


class SDKClient(AsyncOpenAI):
    """``AsyncOpenAI`` with that decoder."""

    def _make_sse_decoder(self) -> SSEDecoder:
        return _Decoder()


def choice_piece(choice: dict[str, Any], chat: bool) -> Piece | None:
    """The output in one streamed choice, or None when it has none."""
    tool_calls = None
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        calls = delta.get("tool_calls")
        tool_calls = calls if isinstance(calls, list) and calls else None
    else:
        text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    logprobs = logprobs if isinstance(logprobs, dict) and any(logprobs.values()) else None
    if not (text or tool_calls or logprobs):
        return None
    return Piece(text=str(text), tokens=1, tool_calls=tool_calls, logprobs=logprobs)


def usage_count(usage: dict[str, Any], key: str, minus: int = 0) -> int | None:
    """``usage[key]`` less ``minus`` when it is a count (an int >= 0), else None."""
    value = usage.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return max(0, value - minus)
    return None
