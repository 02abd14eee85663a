"""Putting streamed OpenAI pieces back together: tool-call deltas and log-probabilities.

A chat model streams a tool call as deltas sharing an ``index``: the first names the
call (``id``, ``type``, ``function.name``), the next ones carry pieces of
``function.arguments``. ``ToolCalls`` concatenates them into whole calls (a
non-streaming answer) or merges runs of deltas (a coalesced chunk); ``merge_logprobs``
concatenates the per-token lists of OpenAI ``logprobs`` objects.
"""

from __future__ import annotations

from typing import Any


class ToolCalls:
    """Tool-call deltas concatenated by ``index``, in the order the calls began."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, deltas: list[dict[str, Any]]) -> None:
        """Fold a list of deltas in."""
        for delta in deltas:
            index = delta.get("index", len(self._calls))
            index = index if isinstance(index, int) else len(self._calls)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = {"index": index}
            for key, value in delta.items():
                if key == "function" and isinstance(value, dict):
                    function = call.setdefault("function", {})
                    for name, part in value.items():
                        if name == "arguments" and isinstance(part, str):
                            function["arguments"] = function.get("arguments", "") + part
                        elif part is not None:
                            function[name] = part
                elif key != "index" and value is not None:
                    call[key] = value

    def deltas(self) -> list[dict[str, Any]]:
        """The merged deltas (``index`` kept): one per call, for a coalesced chunk."""
        return [dict(call) for call in self._calls.values()]

    def calls(self) -> list[dict[str, Any]]:
        """Whole calls for a non-streaming answer (no ``index``; ``type`` defaults to
        ``function`` and ``arguments`` to ``""``)."""
        out = []
        for call in self._calls.values():
            whole = {k: v for k, v in call.items() if k != "index"}
            whole.setdefault("type", "function")
            function = dict(whole.get("function") or {})
            function.setdefault("arguments", "")
            whole["function"] = function
            out.append(whole)
        return out


def merge_logprobs(into: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """``into`` extended with ``more``: list fields concatenated, others replaced."""
    merged = dict(into or {})
    for key, value in more.items():
        if isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *value]
        elif value is not None or key not in merged:
            merged[key] = value
    return merged


class Output:
    """What one job produced: totals, and what waits to leave in the next chunk.

    ``add`` folds a backend piece in; a stream takes its pending part with ``take()``
    (one chunk's text, tokens, merged tool-call deltas and log-probabilities); a
    non-streaming answer takes everything at the end the same way.
    """

    __slots__ = (
        "_calls",
        "_logprobs",
        "_parts",
        "embedding",
        "engine_tokens",
        "finish",
        "held",
        "prompt_tokens",
        "resumed",
        "saw_calls",
        "tokens",
    )

    def __init__(self, resume_tokens: int = 0) -> None:
        self.resumed = resume_tokens
        self.tokens = resume_tokens
        """Tokens of the whole output so far (resumed part included)."""
        self.held = 0
        """Tokens pending for the next chunk."""
        self.prompt_tokens: int | None = None
        self.engine_tokens: int | None = None
        self.finish = "stop"
        self.embedding: list[float] | None = None
        self.saw_calls = False
        self._parts: list[str] = []
        self._calls = ToolCalls()
        self._logprobs: dict[str, Any] | None = None

    def add(self, piece: Any) -> bool:
        """Fold ``piece`` (a ``Piece``) in; True when it carries output for the caller."""
        if piece.finish_reason:
            self.finish = piece.finish_reason
        if piece.prompt_tokens is not None:
            self.prompt_tokens = piece.prompt_tokens
        if piece.completion_tokens is not None:
            self.engine_tokens = piece.completion_tokens
        if piece.embedding is not None:
            self.embedding = piece.embedding
            self.tokens += piece.tokens
            return False
        output = False
        if piece.text:
            self._parts.append(piece.text)
            output = True
        if piece.tool_calls:
            self._calls.add(piece.tool_calls)
            self.saw_calls = output = True
        if piece.logprobs:
            self._logprobs = merge_logprobs(self._logprobs, piece.logprobs)
            output = True
        if output:
            self.tokens += piece.tokens
            self.held += piece.tokens
        return output

    @property
    def pending(self) -> bool:
        """Something waits for the next chunk."""
        return bool(self._parts or self._calls or self._logprobs)

    def take(self) -> tuple[str, int, list[dict[str, Any]] | None, dict[str, Any] | None]:
        """The pending text, tokens, tool-call deltas and log-probabilities (then cleared)."""
        text = "".join(self._parts)
        calls = self._calls.deltas() if self._calls else None
        out = (text, self.held, calls, self._logprobs)
        self._parts.clear()
        self._calls = ToolCalls()
        self._logprobs = None
        self.held = 0
        return out

    def take_all(self) -> tuple[str, list[dict[str, Any]] | None, dict[str, Any] | None]:
        """Everything, for a non-streaming answer: text, whole tool calls, log-probabilities."""
        calls = self._calls.calls() if self._calls else None
        text, _, _, logprobs = self.take()
        return text, calls, logprobs

    def total(self) -> int:
        """Output tokens: the engine's count when it gave one (plus the resumed part)."""
        if self.engine_tokens is not None:
            return self.resumed + self.engine_tokens
        return self.tokens

    def finish_reason(self) -> str:
        """``tool_calls`` only when calls were produced (an engine may claim it without)."""
        if self.finish == "tool_calls" and not self.saw_calls:
            return "stop"
        return self.finish
