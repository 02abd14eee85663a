"""A node played over raw NATS (no fedgate worker code), scripted per dispatch.

Used where a test needs a node that misbehaves in a precise way: answers 404, 429 with
``Retry-After``, 5xx for one prompt only, or a stream that stops. Everything it sees is
recorded (dispatches, cancels) so that tests can assert what reached the node.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import headers as h

Behavior = Callable[["RawNode", dict[str, Any], str], Awaitable[None]]
"""``behavior(node, dispatch, reply)``: answer one dispatch on ``reply``."""


class RawNode:
    """Heartbeats on ``fed.heartbeat.<id>`` and answers dispatches with ``behavior``."""

    def __init__(
        self,
        nc: Client,
        node_id: str,
        behavior: Behavior,
        *,
        model: str = "m",
        capabilities: tuple[str, ...] = ("generate",),
        capacity: int = 8,
        region: str = "r1",
    ) -> None:
        self.nc = nc
        self.node_id = node_id
        self.behavior = behavior
        self.model = model
        self.capabilities = capabilities
        self.capacity = capacity
        self.region = region
        self.incarnation = secrets.token_hex(6)
        self.dispatches: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.cancel_event = asyncio.Event()
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None

    def heartbeat(self) -> bytes:
        return json.dumps({
            "node_id": self.node_id, "incarnation": self.incarnation, "region": self.region,
            "models": [{"model": self.model, "capabilities": list(self.capabilities)}],
            "capacity": self.capacity, "in_flight": 0, "interval_ms": 200,
            "started_ms": int(time.time() * 1000),
        }).encode()  # fmt: skip

    @property
    def canaries(self) -> list[dict[str, Any]]:
        return [d for d in self.dispatches if d.get("request_id", "").startswith("canary-")]

    @property
    def work(self) -> list[dict[str, Any]]:
        """Dispatches that are not canaries."""
        return [d for d in self.dispatches if not d.get("request_id", "").startswith("canary-")]

    async def start(self) -> RawNode:
        base = f"fed.node.{self.node_id}"
        self._subs = [
            await self.nc.subscribe(f"{base}.infer", cb=self._on_dispatch),
            await self.nc.subscribe(f"{base}.ping", cb=self._on_ping),
            await self.nc.subscribe(f"{base}.cancel", cb=self._on_cancel),
        ]
        await self.nc.flush()
        await self.nc.publish(f"fed.heartbeat.{self.node_id}", self.heartbeat())
        self._beat = asyncio.create_task(self._beat_loop())
        return self

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)  # sleep-ok: the heartbeat interval
            await self.nc.publish(f"fed.heartbeat.{self.node_id}", self.heartbeat())

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, b"{}")

    async def _on_cancel(self, msg: Msg) -> None:
        self.cancels.append(json.loads(msg.data or b"{}").get("request_id", ""))
        self.cancel_event.set()

    async def _on_dispatch(self, msg: Msg) -> None:
        dispatch = json.loads(msg.data)
        self.dispatches.append(dispatch)
        task = asyncio.create_task(self.behavior(self, dispatch, msg.reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        for task in list(self._tasks):
            task.cancel()
        for sub in self._subs:
            await sub.unsubscribe()
        await self.nc.publish(f"fed.leave.{self.node_id}", b"")


# -- behaviours ----------------------------------------------------------------------


def result(node: RawNode, dispatch: dict[str, Any], output: str) -> bytes:
    return json.dumps({
        "request_id": dispatch.get("request_id", ""), "model": node.model, "output": output,
        "served_by": node.node_id, "region": node.region, "tokens": len(output.split()) or 1,
        "latency_ms": 1.0, "attempt": dispatch.get("attempt", 1),
    }).encode()  # fmt: skip


async def echo(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    """Answer with the prompt itself (a stream of its words, or one result)."""
    request = dispatch["request"]
    text = request.get("input", "") or "ok"
    if request.get("stream"):
        for i, word in enumerate(text.split(), 1):
            chunk = {"seq": i, "text": word + " ", "tokens": 1}
            await node.nc.publish(reply, json.dumps(chunk).encode())
        await node.nc.publish(reply, b"", headers={h.TOKENS: str(len(text.split()))})
    else:
        await node.nc.publish(reply, result(node, dispatch, text))


def error(code: int, kind: str, text: str, **extra: str) -> Behavior:
    """Answer every dispatch with this error."""

    async def behave(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
        headers = {h.ERROR_CODE: str(code), h.ERROR: text, h.FED_ERROR: kind, **extra}
        await node.nc.publish(reply, b"", headers=headers)

    return behave


def canary_ok(work: Behavior) -> Behavior:
    """Serve canaries with a one-token answer, everything else with ``work``."""

    async def behave(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
        if dispatch.get("request_id", "").startswith("canary-"):
            await node.nc.publish(reply, result(node, dispatch, "pong"))
        else:
            await work(node, dispatch, reply)

    return behave
