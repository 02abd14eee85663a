"""A deterministic synthetic backend, for demos, tests and benchmarks.

Token ``i`` of an output depends only on (model, input, ``params.seed``, ``i``), so a
stream resumed at token ``k`` on another node continues exactly as the first node
would have: the concatenation equals an uninterrupted run. Delays and failures can be
injected for fault tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.errors import BadRequest
from worker.backends.base import BackendError, Job, Piece

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


@dataclass(frozen=True, slots=True)
class SyntheticOptions:
    """Timing and fault injection of the synthetic backend."""

    ttft_ms: float = 0.0
    """Delay before the first token."""
    token_interval_ms: float = 0.0
    """Delay between tokens."""
    fail_rate: float = 0.0
    """Probability that a job fails before its first token."""
    fail_after_tokens: int = 0
    """Fail mid-stream after this many tokens of a dispatch (0 = never)."""
    hang: bool = False
    """Accept jobs and never produce anything (a hung node)."""
    embedding_dim: int = 8


def token_at(model: str, text: str, seed: object, index: int) -> str:
    """The ``index``-th token (0-based) of the output for this model, input and seed."""
    digest = hashlib.blake2b(f"{model}\x00{text}\x00{seed}\x00{index}".encode(), digest_size=2)
    return _WORDS[int.from_bytes(digest.digest(), "big") % len(_WORDS)] + " "


def expected_text(model: str, text: str, seed: object = None, max_tokens: int = 10) -> str:
    """The full output of an uninterrupted run (what tests compare against)."""
    return "".join(token_at(model, text, seed, i) for i in range(max_tokens))


def embedding_of(model: str, text: str, dim: int) -> list[float]:
    """A deterministic unit-ish vector for ``text``."""
    raw = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=4 * dim).digest()
    values = struct.unpack(f"<{dim}I", raw)
    return [round(v / 2**32 * 2 - 1, 6) for v in values]


def refuse_unsupported(params: dict[str, object]) -> None:
    """Raise ``BadRequest`` naming the first parameter synthetic words cannot honour."""
    if params.get("tools"):
        raise BadRequest("the synthetic backend makes no tool calls: `tools` is not supported")
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise BadRequest("the synthetic backend writes words, not JSON: `response_format`")
    if params.get("logprobs"):
        raise BadRequest("the synthetic backend has no log-probabilities: `logprobs`")
    n = params.get("n")
    if n is not None and n != 1:
        raise BadRequest("`n` must be 1 (one choice per request)")


class SyntheticBackend:
    """Produces deterministic words; honours ``max_tokens``, ``seed`` and resume."""

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        self.options = options or SyntheticOptions()
        self._random = random.Random()

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Yield one token per piece, starting after the resumed part.

        Raises ``BadRequest`` for what synthetic words cannot honour (tools, a JSON
        ``response_format``, ``logprobs``, ``n`` > 1, a bad ``max_tokens``): nothing is
        dropped in silence. Sampling parameters are accepted and have no effect (the
        words are a function of model, prompt and ``seed``)."""
        refuse_unsupported(job.params)
        budget = job.max_tokens
        opts = self.options
        if opts.hang:
            await asyncio.Event().wait()
        if opts.fail_rate and self._random.random() < opts.fail_rate:
            raise BackendError("injected failure")
        if opts.ttft_ms:
            await asyncio.sleep(opts.ttft_ms / 1000)
        if job.capability == "embed":
            vector = embedding_of(job.model, job.request.input, opts.embedding_dim)
            yield Piece(text="", tokens=len(job.request.input.split()) or 1, embedding=vector)
            return
        seed = job.params.get("seed")
        interval = opts.token_interval_ms / 1000
        produced = 0
        for index in range(job.resume_tokens, budget):
            if opts.fail_after_tokens and produced >= opts.fail_after_tokens:
                raise BackendError("injected mid-stream failure")
            if interval and produced:
                await asyncio.sleep(interval)
            produced += 1
            yield Piece(text=token_at(job.model, job.request.input, seed, index))
        yield Piece(text="", tokens=0, finish_reason="length")
