"""Fault-test tooling: a raw streaming load driver with a tally, and real components.

``StreamLoad`` speaks the wire contract as ``nats req --wait-for-empty`` does, over one
wildcard reply subscription: every request gets its own reply subject and a record of
what arrived on it, in order. A message on a reply subject *after* its terminal message
is an "answered twice"; a request with no terminal message by its deadline (plus a
scheduling grace) is "lost". ``settle()`` makes the after-terminal count final without
sleeping: once the gateway holds nothing, a flush of the gateway's connection and then
of the caller's proves every message the gateway ever published has been delivered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.main import start_gateway
from gateway.service import GatewayService
from shared import errors
from shared.client import FedClient
from shared.config import GatewayConfig, NatsConfig
from tests.helpers import Proc
from worker.backends.synthetic import expected_text

GRACE_S = 1.5
"""Scheduling slack on top of a request's own deadline (2 shared cores under load)."""


@dataclass(slots=True)
class Record:
    """What one streaming request received on its reply subject."""

    body: dict[str, Any]
    chunks: list[dict[str, Any]] = field(default_factory=list)
    terminal: Msg | None = None
    after_terminal: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.terminal.headers or {}) if self.terminal is not None else {}

    @property
    def ok(self) -> bool:
        return self.headers.get("Fed-Status") == "ok"

    @property
    def error(self) -> str:
        """The explicit error kind ("no_responders" for a NATS 503 status)."""
        hdrs = self.headers
        if hdrs.get("Status") == "503":
            return "no_responders"
        return hdrs.get("Fed-Error", "unknown")

    @property
    def text(self) -> str:
        return "".join(c["text"] for c in self.chunks)

    @property
    def contiguous(self) -> bool:
        return [c["seq"] for c in self.chunks] == list(range(1, len(self.chunks) + 1))

    def expected(self, model: str) -> str:
        params = self.body.get("params", {})
        return expected_text(
            model, self.body["input"], params.get("seed"), params.get("max_tokens", 10)
        )


@dataclass(slots=True)
class Tally:
    """Counts over a finished load (``ok + sum(errors) + lost == requests``)."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    bad_seq: int = 0
    bad_text: int = 0
    answered_twice: int = 0

    def line(self, label: str) -> str:
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"[{label}] requests={self.requests} ok={self.ok} errors={sum(self.errors.values())}"
            f" ({errs}) lost={self.lost} bad_seq={self.bad_seq} bad_text={self.bad_text}"
            f" answered_twice={self.answered_twice}"
        )

    def assert_clean(self, label: str) -> str:
        """No loss, no seq fault, no wrong text, no second answer; returns the line."""
        text = self.line(label)
        print(text)
        assert self.ok + sum(self.errors.values()) + self.lost == self.requests, text
        assert (self.lost, self.bad_seq, self.bad_text, self.answered_twice) == (0, 0, 0, 0), text
        return text


class StreamLoad:
    """Streaming requests over raw nats-py, each with its own reply subject."""

    def __init__(self, nc: Client, model: str, subject: str = "infer.generate") -> None:
        self.nc = nc
        self.model = model
        self.subject = subject
        self.records: dict[str, Record] = {}
        self._ids = itertools.count(1)
        self._inbox = ""
        self._sub: Any = None

    async def start(self) -> StreamLoad:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_msg)
        await self.nc.flush()
        return self

    async def _on_msg(self, msg: Msg) -> None:
        rec = self.records.get(msg.subject.rpartition(".")[2])
        if rec is None:
            return
        if rec.terminal is not None:
            rec.after_terminal += 1
        elif msg.data:
            rec.chunks.append(json.loads(msg.data))
        else:
            rec.terminal = msg
            rec.done.set()

    def body(self, max_tokens: int, timeout_ms: int, **extra: Any) -> dict[str, Any]:
        n = next(self._ids)
        return {
            "input": f"chaos {n}",
            "stream": True,
            "request_id": f"r{n}-{secrets.token_hex(3)}",
            "timeout_ms": timeout_ms,
            "params": {"max_tokens": max_tokens, "seed": n % 7},
            **extra,
        }

    async def one(self, body: dict[str, Any]) -> Record:
        """Send one request and wait for its terminal message (or its deadline)."""
        token = body["request_id"]
        rec = self.records[token] = Record(body)
        await self.nc.publish(
            self.subject, json.dumps(body).encode(), reply=f"{self._inbox}.{token}"
        )
        try:
            async with asyncio.timeout(body["timeout_ms"] / 1000 + GRACE_S):
                await rec.done.wait()
        except TimeoutError:
            pass  # counted as lost
        return rec

    async def run(self, bodies: Iterable[dict[str, Any]], concurrency: int) -> None:
        """Send every body, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def limited(body: dict[str, Any]) -> None:
            async with gate:
                await self.one(body)

        async with asyncio.TaskGroup() as tg:
            for body in bodies:
                tg.create_task(limited(body))

    async def settle(self, *gateways: GatewayService, timeout: float = 15.0) -> None:
        """Make late messages visible: gateways idle, then flush their and our connection."""
        from tests.helpers import eventually

        await eventually(lambda: all(g.in_flight == 0 for g in gateways), timeout, "gateways idle")
        for g in gateways:
            await g.nc.flush(timeout=5)
        await self.nc.flush(timeout=5)

    def tally(self) -> Tally:
        t = Tally(requests=len(self.records))
        for rec in self.records.values():
            t.answered_twice += rec.after_terminal > 0
            t.bad_seq += not rec.contiguous
            if rec.terminal is None:
                t.lost += 1
            elif rec.ok:
                t.ok += 1
                t.bad_text += rec.text != rec.expected(self.model)
                t.bad_text += rec.headers.get("Fed-Tokens") != str(len(rec.chunks))
            else:
                t.errors[rec.error] += 1
        return t


# -- real components ---------------------------------------------------------------------


async def gateway_in_process(
    url: str, config: GatewayConfig, **service_kwargs: Any
) -> tuple[GatewayService, Client]:
    """A gateway wired exactly as ``fedgate gateway`` wires it (reconnect callbacks too)."""
    return await start_gateway(NatsConfig(url=url), config, wait_s=10, **service_kwargs)


async def stop_gateway(svc: GatewayService, nc: Client) -> None:
    await svc.stop(grace_s=0.5)
    if not nc.is_closed:
        await nc.close()


def worker(url: str, node_id: str, *extra: str, model: str = "m") -> Proc:
    """A real ``fedgate worker`` process serving ``model`` for generate."""
    return Proc(
        "worker",
        "--nats",
        url,
        "--node-id",
        node_id,
        "--model",
        model,
        "--capability",
        "generate",
        "--token-interval-ms",
        "5",
        "--heartbeat-interval",
        "0.2",
        "--capacity",
        "64",
        *extra,
    )


class ClientLoad:
    """Streaming requests through the Python client (``FedClient``), tallied.

    A request "hangs" if its task has not ended (with chunks and a result, or a raised
    error) by its deadline plus the client's own 1 s margin plus ``GRACE_S``.
    """

    def __init__(self, client: FedClient, model: str) -> None:
        self.client = client
        self.model = model
        self.tally = Tally()
        self.hung = 0
        self.done = 0
        self.bad_examples: list[list[int]] = []
        """The seq lists of the first few streams with a gap or a repeat."""
        self._ids = itertools.count(1)

    async def one(self, timeout_ms: int = 8000, max_tokens: int = 30) -> None:
        n = next(self._ids)
        prompt, seed = f"client {n}", n % 5
        seqs: list[int] = []
        self.tally.requests += 1
        try:
            async with asyncio.timeout(timeout_ms / 1000 + 1 + GRACE_S):
                stream = self.client.stream(
                    "generate",
                    prompt,
                    timeout_ms=timeout_ms,
                    params={"max_tokens": max_tokens, "seed": seed},
                )
                async with stream:
                    async for chunk in stream:
                        seqs.append(chunk.seq)
            self.tally.ok += 1
            if stream.text != expected_text(self.model, prompt, seed, max_tokens):
                self.tally.bad_text += 1
        except errors.FedError as exc:
            self.tally.errors[exc.kind] += 1
        except TimeoutError:
            self.hung += 1
            self.tally.lost += 1
        finally:
            self.done += 1
        if seqs != list(range(1, len(seqs) + 1)):
            self.tally.bad_seq += 1
            if len(self.bad_examples) < 3:
                self.bad_examples.append(seqs)

    async def run(self, n: int, concurrency: int, **kwargs: Any) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def limited() -> None:
            async with gate:
                await self.one(**kwargs)

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(limited())
