"""The OpenAI wire format as the openai backend speaks it: request bodies and streamed
events (pure: no I/O).

- ``RESERVED``: ``params`` keys the backend sets itself; ``budget``: the output tokens
  still to ask for; ``chat_messages``: the chat to send, or None for a completion.
- ``choice_piece``: one streamed choice (a chat ``delta`` or a completion's ``text``,
  tool-call deltas, log-probabilities) as a ``Piece`` of 1 token; ``usage_count``: a
  token count of the upstream's ``usage``; ``pooled``: an embedding as one vector of
  floats (per-token vectors averaged).
- ``SSEParser``: server-sent events read incrementally from the bytes of a response
  body (every valid framing); ``json_of``: one event's or answer's JSON.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

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


class SSEParser:
    """Server-sent events (the WHATWG framing), incrementally: ``feed`` the body's bytes as
    they come and get back the ``data`` of every event they complete.

    Lines end in CRLF, LF or CR (a CRLF may be split between two chunks); ``data`` lines
    are joined with LF, with one space after the colon dropped; a blank line dispatches;
    comments (``:``) and the other fields (``event``, ``id``, ``retry``) are ignored; an
    event without data dispatches nothing, and one the body ends inside is dropped.
    """

    __slots__ = ("_data", "_skip_lf", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        """The unfinished last line of the bytes fed so far."""
        self._data: list[bytes] = []
        """The ``data`` lines of the event being read."""
        self._skip_lf = False
        """The last chunk ended in CR: a LF starting the next one completes a CRLF."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of the events this chunk completes (most often one)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._tail + chunk if self._tail else chunk
        if b"\r" in buf:
            self._skip_lf = buf[-1:] == b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    joined = b"\n".join(data) if len(data) > 1 else data[0]
                    data.clear()
                    if joined:
                        events.append(joined)
            elif line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line == b"data":
                data.append(b"")
        return events


_decode = msgspec.json.Decoder().decode


def json_of(data: bytes) -> Any:
    """A JSON document (msgspec; the stdlib for what only it reads: NaN, Infinity).

    Raises ``ValueError`` when it is not JSON.
    """
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


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
