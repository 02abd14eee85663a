"""A gateway on a fake NATS connection and a fake clock: the engine's tests drive it
message by message (no server, no sleeps) and read what it published."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.msg import Msg

from gateway.clock import FakeClock
from gateway.service import GatewayService
from shared import messages as m
from shared.config import GatewayConfig
from tests.helpers import FakeNats

CALLER = "_INBOX.caller"


@dataclass
class Gateway:
    """A started gateway service, its fake connection and its clock."""

    svc: GatewayService
    nc: FakeNats
    clock: FakeClock

    async def node(self, node_id: str, cost: float = 0.5, capacity: int = 4, **kw: Any) -> None:
        """A node joins (its heartbeats never expire on the fake clock's scale)."""
        models = kw.pop("models", (m.ModelInfo(model="m", capabilities=("generate", "embed")),))
        hb = m.Heartbeat(
            node_id=node_id, incarnation=f"{node_id}-1", models=models, cost=cost,
            capacity=capacity, interval_ms=3_600_000, **kw,
        )  # fmt: skip
        await self.nc.deliver(f"fed.heartbeat.{node_id}", m.encode(hb))

    async def ask(
        self, body: dict[str, Any], token: str = "1", capability: str = "generate", **kw: Any
    ) -> str:
        """A caller's request; returns its reply subject."""
        reply = f"{CALLER}.{token}"
        await self.nc.deliver(f"infer.{capability}", json.dumps(body).encode(), reply=reply, **kw)
        return reply

    def dispatches(self, node_id: str = "*") -> list[Msg]:
        """Dispatches sent to ``node_id`` (every node by default), oldest first."""
        return self.nc.sent(f"fed.node.{node_id}.infer")

    def to_caller(self, token: str = "1") -> list[Msg]:
        """What the caller's reply subject received (acks included), oldest first."""
        return self.nc.sent(f"{CALLER}.{token}")

    async def answer(self, dispatch: Msg, data: bytes = b"", **headers: str) -> None:
        """The node answers ``dispatch`` on its reply subject."""
        await self.nc.deliver(dispatch.reply, data, headers=dict(headers) or None)

    async def tick(self, seconds: float = 0.0) -> None:
        """Advance the clock and fire what is due."""
        self.clock.advance(seconds)
        await self.svc.sweeper.fire()


def result(dispatch: Msg, node_id: str, output: str = "out", tokens: int = 3) -> bytes:
    """A node's non-streaming result for ``dispatch``."""
    body = json.loads(dispatch.data)
    return m.encode(
        m.Result(
            request_id=body["request_id"], model="m", output=output, served_by=node_id,
            region="default", tokens=tokens, latency_ms=1.0, attempt=body["attempt"],
        )
    )  # fmt: skip


def chunk(seq: int, text: str, tokens: int = 1) -> bytes:
    """A node's chunk."""
    return m.encode(m.Chunk(seq=seq, text=text, tokens=tokens))


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    nc = FakeNats()
    clock = FakeClock()
    config = GatewayConfig(
        gateway_id="gw-test",
        strategy="least_latency",
        retry_backoff_initial_s=0,  # retries go out at once: no timer between attempts
        probe_interval_s=3600,
        decisions=False,
    )
    svc = GatewayService(nc, config, clock=clock)  # type: ignore[arg-type]
    await svc.start()
    try:
        yield Gateway(svc, nc, clock)
    finally:
        await svc.stop(grace_s=0)
