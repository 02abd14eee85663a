"""Overload: a bounded queue in front of full nodes, ``429`` beyond it, bounded memory.

The node's backend is gated (nothing completes until the test opens the gate), so which
request is running, queued or rejected is decided by counts, not by timing.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from gateway.service import GatewayService
from tests.helpers import Federation, eventually, federation
from worker.backends.base import Job, Piece
from worker.backends.synthetic import SyntheticBackend, expected_text

CAPACITY, MAX_QUEUE = 4, 20


class GatedBackend:
    """The synthetic backend behind a gate; counts jobs that started."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self._inner = SyntheticBackend()

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        self.started += 1
        await self.gate.wait()
        async for piece in self._inner.stream(job):
            yield piece


class Replies:
    """Replies on one wildcard inbox, by request token, in arrival order."""

    def __init__(self) -> None:
        self.by_token: dict[str, Msg] = {}
        self.order: list[str] = []

    async def on_msg(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        self.by_token[token] = msg
        self.order.append(token)

    def kind(self, token: str) -> str:
        hdrs = self.by_token[token].headers or {}
        return hdrs.get("Fed-Error", "ok")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def setup(fed: Federation) -> tuple[GatewayService, GatedBackend]:
    svc = await fed.gateway(
        max_queue=MAX_QUEUE, first_chunk_timeout_s=600, request_timeout_s=600, probe_interval_s=60
    )
    backend = GatedBackend()
    # Heartbeats every 2 s (expiry 6 s): the flood shares this process's event loop, and
    # a node that misses heartbeats for it (a loaded 2-core machine) would be dropped and
    # its held requests moved (all_unhealthy), not overloaded.
    await fed.node(
        "n1", backend, capacity=CAPACITY, models={"m": ("generate",)}, heartbeat_interval_s=2.0
    )
    await fed.seen("n1")
    return svc, backend


@pytest.mark.slow
async def test_queue_then_429_at_once_and_bounded_memory(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        svc, backend = await setup(fed)
        nc = await fed.client()
        replies = Replies()
        inbox = nc.new_inbox()
        await nc.subscribe(inbox + ".*", cb=replies.on_msg)
        peak = {"flights": 0, "queued": 0}
        original = svc._on_request

        async def watched(msg: Msg) -> None:  # sample the gateway's tables on every request
            await original(msg)
            peak["flights"] = max(peak["flights"], len(svc._flights))
            peak["queued"] = max(peak["queued"], svc.queued)

        svc._subs[-1]._cb = watched  # the intake subscription (started last)

        async def send(i: int, timeout_ms: int = 300_000) -> str:
            body = {"input": f"q{i}", "request_id": f"q{i}", "timeout_ms": timeout_ms}
            await nc.publish("infer.generate", json.dumps(body).encode(), reply=f"{inbox}.q{i}")
            return f"q{i}"

        accepted = [await send(i) for i in range(CAPACITY + MAX_QUEUE - 1)]
        short = await send(999, timeout_ms=400)  # the last queue slot, with a short deadline
        await eventually(
            lambda: backend.started == CAPACITY and svc.queued == MAX_QUEUE,
            10,
            "nodes full, queue full",
        )
        rejected = [await send(i) for i in range(100, 150)]
        await eventually(lambda: all(t in replies.by_token for t in rejected), 10, "429s")
        assert {replies.kind(t) for t in rejected} == {"overloaded"}
        assert not any(t in replies.by_token for t in accepted)  # 429s came first, at once
        # The queued request whose deadline passes while it waits gets its 504.
        await eventually(lambda: short in replies.by_token, 10, "queued request timed out")
        assert replies.kind(short) == "timeout"
        # ... and frees its queue slot, which the next request takes.
        await eventually(lambda: svc.queued == MAX_QUEUE - 1, 10, "slot freed")
        accepted.append(await send(998))
        await eventually(lambda: svc.queued == MAX_QUEUE, 10, "queue full again")

        # Flood: 5,000 requests rejected at once; the gateway's tables and RSS stay bounded.
        async def flood(n: int, base: int) -> None:
            for i in range(base, base + n):
                await send(i)
            await nc.flush()
            await eventually(
                lambda: sum(1 for i in range(base, base + n) if f"q{i}" in replies.by_token) == n,
                60,
                "flood",
            )

        await flood(500, 10_000)  # warm up allocator and caches
        before = rss_kib()
        await flood(5000, 20_000)
        growth = rss_kib() - before
        kinds = Counter(replies.kind(f"q{i}") for i in range(20_000, 25_000))
        print(
            f"[overload] 5000 flood requests: {dict(kinds)}; peak flights={peak['flights']} "
            f"queued={peak['queued']} (bound {CAPACITY + MAX_QUEUE}); RSS growth {growth} KiB"
        )
        assert kinds == {"overloaded": 5000}
        assert peak["flights"] <= CAPACITY + MAX_QUEUE and peak["queued"] <= MAX_QUEUE
        assert growth < 16 * 1024, f"RSS grew {growth} KiB over 5000 rejected requests"

        backend.gate.set()  # capacity frees: every accepted request is served, oldest first
        await eventually(lambda: all(t in replies.by_token for t in accepted), 20, "served")
        assert [replies.kind(t) for t in accepted] == ["ok"] * len(accepted)
        for t in accepted:
            assert json.loads(replies.by_token[t].data)["output"] == expected_text("m", t)
        assert svc.in_flight == 0 and svc.queued == 0


async def test_queued_request_that_times_out_frees_its_slot(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        svc, backend = await setup(fed)
        nc = await fed.client()
        replies = Replies()
        inbox = nc.new_inbox()
        await nc.subscribe(inbox + ".*", cb=replies.on_msg)

        async def send(i: int, timeout_ms: int = 300_000) -> str:
            body = {"input": f"q{i}", "request_id": f"q{i}", "timeout_ms": timeout_ms}
            await nc.publish("infer.generate", json.dumps(body).encode(), reply=f"{inbox}.q{i}")
            return f"q{i}"

        for i in range(CAPACITY + MAX_QUEUE - 1):
            await send(i)
        short = await send(999, timeout_ms=300)
        await eventually(lambda: short in replies.by_token, 10, "queued request timed out")
        assert replies.kind(short) == "timeout"
        late = await send(1000)
        await eventually(
            lambda: svc.in_flight == CAPACITY + MAX_QUEUE or late in replies.by_token,
            10,
            "late request queued or answered",
        )
        assert late not in replies.by_token  # queued (the slot is free), not a 429
        assert svc.queued == MAX_QUEUE
        backend.gate.set()
        await eventually(lambda: svc.in_flight == 0, 20, "drained")
