"""The OpenAI objects of one answer: a whole completion, or the events of its stream.

A ``Reply`` knows whether it answers a chat or a text completion, its id and model, and
whether the caller asked for usage in the stream (``stream_options.include_usage``:
every chunk then carries ``"usage": null`` and a last chunk with ``"choices": []``
carries the totals, after the one with ``finish_reason``, as OpenAI documents).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from shared import messages as m

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
"""The last server-sent event of an OpenAI stream."""


def event(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class Reply:
    """Builds the OpenAI objects of one chat or text completion."""

    __slots__ = ("chat", "created", "id", "include_usage", "model")

    def __init__(
        self, chat: bool, request_id: str, model: str, *, include_usage: bool = False
    ) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def start(self) -> dict[str, Any]:
        """The first event of a chat stream (the assistant's role)."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        return self._chunk([choice])

    def delta(self, chunk: m.Chunk) -> dict[str, Any]:
        """The event of one relayed chunk: text, tool-call deltas, log-probabilities."""
        choice: dict[str, Any]
        if self.chat:
            delta: dict[str, Any] = {}
            if chunk.text:
                delta["content"] = chunk.text
            if chunk.tool_calls:
                delta["tool_calls"] = chunk.tool_calls
            choice = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": chunk.text, "finish_reason": None}
        choice["logprobs"] = chunk.logprobs
        return self._chunk([choice])

    def finish(self, reason: str, fedgate: dict[str, Any]) -> dict[str, Any]:
        """The event with ``finish_reason`` (and fedgate's figures in ``fedgate``)."""
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": "", "finish_reason": reason}
        choice["logprobs"] = None
        out = self._chunk([choice])
        out["fedgate"] = fedgate
        return out

    def usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        """The last event when ``include_usage``: no choices, the totals."""
        out = self._chunk([])
        out["usage"] = usage(prompt, completion)
        return out

    def complete(self, result: m.Result) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        choice: dict[str, Any]
        if self.chat:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": result.output if result.output or not result.tool_calls else None,
            }
            if result.tool_calls:
                message["tool_calls"] = result.tool_calls
            choice = {"index": 0, "message": message, "finish_reason": result.finish_reason}
        else:
            choice = {"index": 0, "text": result.output, "finish_reason": result.finish_reason}
        choice["logprobs"] = result.logprobs
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": result.model or self.model,
            "choices": [choice],
            "usage": usage(result.prompt_tokens or 0, result.tokens),
        }
