"""A fake OpenAI-compatible upstream: paced words, no model, faults on demand.

Every router in the peers benchmark fronts the same few of these, so they are the fixed
part of the comparison. Each answers:

- ``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed (server-sent
  events, one word per chunk: a word-level tokenizer counts one token per chunk; with
  ``stream_options.include_usage`` a last chunk with ``choices: []`` carries the usage)
  or whole; the first word after ``ttft_ms``, the next ones every ``itl_ms``, paced on
  absolute deadlines so a busy event loop does not stretch a stream;
- ``GET /v1/models``, ``/health``, ``/server_info``, ``/model_info`` (what sglang-router
  probes), and ``GET /stats`` (requests and errors served so far: each upstream's share);
- ``POST /admin/faults`` with any of ``fail_rate`` (that fraction of requests answer
  ``500``), ``cut_rate`` and ``cut_after`` (that fraction of streams is cut, the
  connection dropped without a terminating chunk, after ``cut_after`` words) and
  ``die_after`` (the process exits at once, dropping every connection, when that many
  more completions have started). ``{}`` clears them.

Output length: the request's ``max_tokens`` (or ``max_completion_tokens``), else
``--output-tokens``.

Run: ``python -m bench.peers.upstream --port P [--ttft-ms 20] [--itl-ms 10]
[--output-tokens 64] [--model bench] [--fail-rate F] [--cut-rate F --cut-after N]``.
It prints ``READY <port>`` on stdout once it listens (``--port 0``: the OS chooses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their can been has more if "
    "will would when who so no other time into some than its could only new these may "
    "first any like then now over also after did many before must through years where"
).split()
"""Output vocabulary: common English words, each in the benchmark's word-level tokenizer."""


@dataclass(slots=True)
class Faults:
    """What goes wrong, and how often (changed at run time by ``POST /admin/faults``)."""

    fail_rate: float = 0.0
    """Fraction of completions answered with ``500`` before any output."""
    cut_rate: float = 0.0
    """Fraction of streams cut (connection dropped) after ``cut_after`` words."""
    cut_after: int = 8
    die_after: int | None = None
    """Exit the process when this many more completions have started (None: never)."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Faults:
        """Faults from an admin request body (absent keys: no fault)."""
        die = body.get("die_after")
        return cls(
            fail_rate=float(body.get("fail_rate", 0.0)),
            cut_rate=float(body.get("cut_rate", 0.0)),
            cut_after=int(body.get("cut_after", 8)),
            die_after=None if die is None else int(die),
        )


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast words come."""

    ttft_ms: float = 20.0
    itl_ms: float = 10.0
    output_tokens: int = 64
    """Words per answer when the request names no ``max_tokens``."""


@dataclass(slots=True)
class Counters:
    """What this upstream served (read by the benchmark through ``GET /stats``)."""

    requests: int = 0
    """Completions started (chat and plain, streamed or not)."""
    failed: int = 0
    """Answered 500 on purpose."""
    cut: int = 0
    """Streams cut on purpose."""
    completed: int = 0
    """Answers sent whole."""
    by_path: dict[str, int] = field(default_factory=dict)


class Upstream:
    """The aiohttp application of one fake upstream."""

    def __init__(self, model: str, pace: Pace, faults: Faults, seed: int | None = None) -> None:
        self.model = model
        self.pace = pace
        self.faults = faults
        self.counters = Counters()
        self.rng = random.Random(seed)
        self._ids = 0

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        app.router.add_get("/server_info", self.info)
        app.router.add_get("/get_server_info", self.info)
        app.router.add_get("/model_info", self.info)
        app.router.add_get("/get_model_info", self.info)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/admin/faults", self.set_faults)
        return app

    # -- small endpoints ----------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "bench"}]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"model_path": self.model, "tokenizer_path": self.model, "is_generation": True}
        )

    async def stats(self, request: web.Request) -> web.Response:
        c = self.counters
        return web.json_response(
            {
                "requests": c.requests,
                "failed": c.failed,
                "cut": c.cut,
                "completed": c.completed,
                "by_path": c.by_path,
                "pid": os.getpid(),
            }
        )

    async def set_faults(self, request: web.Request) -> web.Response:
        self.faults = Faults.from_json(await request.json())
        return web.json_response({"ok": True})

    # -- completions --------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        c = self.counters
        c.requests += 1
        c.by_path[request.path] = c.by_path.get(request.path, 0) + 1
        faults = self.faults
        if faults.die_after is not None:
            faults.die_after -= 1
            if faults.die_after < 0:
                os._exit(3)  # a crash: every connection drops, nothing is flushed
        if faults.fail_rate and self.rng.random() < faults.fail_rate:
            c.failed += 1
            return _error(500, "injected failure")
        n = _budget(body, self.pace.output_tokens)
        cut_at = n + 1
        if faults.cut_rate and self.rng.random() < faults.cut_rate:
            cut_at = min(n, faults.cut_after)
        self._ids += 1
        rid = f"cmpl-{os.getpid()}-{self._ids}"
        prompt_tokens = _prompt_words(body, chat)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, rid, chat, n, cut_at, prompt_tokens, usage, started)
        await _sleep_until(started + (self.pace.ttft_ms + (n - 1) * self.pace.itl_ms) / 1000)
        text = " ".join(self._word(i) for i in range(n))
        c.completed += 1
        usage_obj = _usage(prompt_tokens, n)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            kind = "text_completion"
        return web.json_response(
            {
                "id": rid,
                "object": kind,
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "usage": usage_obj,
            }
        )

    def _word(self, i: int) -> str:
        return WORDS[i % len(WORDS)]

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        chat: bool,
        n: int,
        cut_at: int,
        prompt_tokens: int,
        usage: bool,
        started: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        created = int(time.time())
        if chat:
            kind = "chat.completion.chunk"
            opening = '"choices":[{"index":0,"delta":'
        else:
            kind, opening = "text_completion", '"choices":[{"index":0,'
        head = (
            f'{{"id":"{rid}","object":"{kind}","created":{created},"model":"{self.model}",'
            + opening
        ).encode()
        tail = b"}]}\n\n"
        ttft_s, itl_s = self.pace.ttft_ms / 1000, self.pace.itl_ms / 1000
        for i in range(n):
            await _sleep_until(started + ttft_s + i * itl_s)
            if i == cut_at:
                self.counters.cut += 1
                assert request.transport is not None
                request.transport.close()  # no terminating chunk: the reply is cut short
                return resp
            word = " " + self._word(i)  # a leading space: a resumed answer stays word-split
            if chat:
                delta = (
                    b'{"role":"assistant","content":"%s"},"finish_reason":null' % word.encode()
                    if i == 0
                    else b'{"content":"%s"},"finish_reason":null' % word.encode()
                )
            else:
                delta = b'"text":"%s","logprobs":null,"finish_reason":null' % word.encode()
            await resp.write(b"data: " + head + delta + tail)
        last = b'{},"finish_reason":"length"' if chat else b'"text":"","finish_reason":"length"'
        out = b"data: " + head + last + tail
        if usage:
            out += (
                b"data: "
                + json.dumps(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(prompt_tokens, n),
                    }
                ).encode()
                + b"\n\n"
            )
        await resp.write(out + b"data: [DONE]\n\n")
        await resp.write_eof()
        self.counters.completed += 1
        return resp


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "server_error", "code": status}}
    return web.json_response(body, status=status)


def _budget(body: dict[str, Any], default: int) -> int:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _prompt_words(body: dict[str, Any], chat: bool) -> int:
    if not chat:
        return len(str(body.get("prompt", "")).split())
    words = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += len(part["text"].split())
    return words


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def serve(host: str, port: int, upstream: Upstream) -> None:
    """Serve until cancelled; prints ``READY <port>`` once listening."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart takes its old port
    sock.bind((host, port))
    runner = web.AppRunner(upstream.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"READY {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A fake OpenAI-compatible upstream (paced words).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: the OS chooses (printed)")
    p.add_argument("--model", default="bench")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--cut-rate", type=float, default=0.0)
    p.add_argument("--cut-after", type=int, default=8)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    upstream = Upstream(
        args.model,
        Pace(args.ttft_ms, args.itl_ms, args.output_tokens),
        Faults(args.fail_rate, args.cut_rate, args.cut_after),
        seed=args.seed,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a fedgate dependency on Linux
        pass
    try:
        asyncio.run(serve(args.host, args.port, upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
