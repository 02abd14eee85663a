"""A small streaming chat client: the load generator of the fault rounds, the real-model
multi-turn workload and the smoke test (aiperf drives the main comparison).

Closed loop: ``concurrency`` lanes each take the next conversation, send its turns one
after the other (the assistant's answer appended to the history before the next turn)
and spread requests round-robin over the router's URLs. Every request is classified:

- ``ok``: a ``200`` stream that ended with a ``finish_reason`` and ``[DONE]`` and carried
  at least ``min_words`` words;
- ``error``: nothing usable reached the caller (a non-200 status, a connection error or an
  ``{"error"}`` event before any word, a timeout before the first word);
- ``truncated``: words arrived, but the stream was cut, ended in an ``{"error"}`` event,
  had no ``finish_reason``, or carried fewer words than ``min_words``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import pct


@dataclass(frozen=True, slots=True)
class Conversation:
    """A system prompt (or none) and the user turns of one chat."""

    turns: tuple[str, ...]
    system: str | None = None
    max_tokens: int = 64
    min_words: int = 0
    """Fewer words than this in an answer counts as truncated (0: no check)."""


@dataclass(slots=True)
class Outcome:
    """One request as the caller saw it."""

    status: str
    """``ok``, ``error`` or ``truncated``."""
    started: float
    ttft_s: float | None = None
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    words: int = 0
    turn: int = 0
    detail: str = ""


def _body(model: str, messages: list[dict[str, str]], max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def stream_chat(
    http: aiohttp.ClientSession,
    base: str,
    api_key: str,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    min_words: int = 0,
    timeout_s: float = 60.0,
) -> tuple[Outcome, str]:
    """One streamed chat completion; returns its outcome and the answer's text."""
    started = time.perf_counter()
    out = Outcome("error", started)
    text: list[str] = []
    finished = done = False
    last = started
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    try:
        async with asyncio.timeout(timeout_s):
            async with http.post(
                f"{base}/v1/chat/completions", data=_body(model, messages, max_tokens),
                headers=headers,
            ) as resp:  # fmt: skip
                if resp.status != 200:
                    out.detail = f"HTTP {resp.status}"
                    await resp.read()
                    return _close(out, started), ""
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        out.detail = f"error event: {str(event['error'])[:120]}"
                        break
                    for choice in event.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            now = time.perf_counter()
                            if out.ttft_s is None:
                                out.ttft_s = now - started
                            else:
                                out.itl_s.append(now - last)
                            last = now
                            text.append(piece)
                        if choice.get("finish_reason"):
                            finished = True
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        out.detail = out.detail or f"{type(exc).__name__}: {exc}"[:160]
    answer = "".join(text)
    out.words = len(answer.split())
    if not (done or out.detail):
        out.detail = "stream ended without [DONE]"
    if finished and done and out.words >= min_words and not out.detail:
        out.status = "ok"
    elif out.words:
        out.status = "truncated"
        out.detail = out.detail or (
            f"{out.words} words" + ("" if finished else ", no finish_reason")
        )
    return _close(out, started), answer


def _close(out: Outcome, started: float) -> Outcome:
    out.latency_s = time.perf_counter() - started
    return out


async def closed_loop(
    urls: Sequence[str],
    api_key: str,
    model: str,
    conversations: Iterable[Conversation],
    concurrency: int,
    timeout_s: float = 60.0,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Run every conversation on ``concurrency`` lanes; returns the outcomes and wall time.

    ``on_done(n)`` is called after each request with the number finished so far (a fault
    can be injected when a run is a third done, whatever the router's speed)."""
    queue = iter(conversations)
    targets = itertools.cycle(urls)
    outcomes: list[Outcome] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)

    async def lane(http: aiohttp.ClientSession) -> None:
        for conv in queue:  # the shared iterator hands each conversation to one lane
            history: list[dict[str, str]] = []
            if conv.system:
                history.append({"role": "system", "content": conv.system})
            for turn, user in enumerate(conv.turns):
                history.append({"role": "user", "content": user})
                outcome, answer = await stream_chat(
                    http, next(targets), api_key, model, history, conv.max_tokens,
                    conv.min_words, timeout_s,
                )  # fmt: skip
                outcome.turn = turn
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(len(outcomes))
                history.append({"role": "assistant", "content": answer})

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(lane(http))
    return outcomes, time.perf_counter() - started


def summarize(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """Latency percentiles (ms) over the successful requests, rates and failure counts."""
    ok = [o for o in outcomes if o.status == "ok"]
    ttft = [o.ttft_s * 1000 for o in ok if o.ttft_s is not None]
    itl = [x * 1000 for o in ok for x in o.itl_s]
    lat = [o.latency_s * 1000 for o in ok]
    figures: dict[str, Any] = {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": sum(o.status == "error" for o in outcomes),
        "truncated": sum(o.status == "truncated" for o in outcomes),
        "rps": round(len(ok) / wall_s, 2) if wall_s else 0.0,
        "wall_s": round(wall_s, 2),
    }
    for name, samples in (("ttft", ttft), ("itl", itl), ("latency", lat)):
        figures[f"{name}_p50_ms"] = round(pct(samples, 0.5), 2) if samples else None
        figures[f"{name}_p99_ms"] = round(pct(samples, 0.99), 2) if samples else None
    details: dict[str, int] = {}
    for o in outcomes:
        if o.status != "ok":
            details[o.detail] = details.get(o.detail, 0) + 1
    figures["failures"] = dict(sorted(details.items(), key=lambda kv: -kv[1])[:5])
    return figures
