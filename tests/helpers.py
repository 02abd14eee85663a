"""Test helpers: poll a condition under a deadline, run real worker/gateway processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import nats
from nats.aio.client import Client

from gateway.service import GatewayService
from shared.config import GatewayConfig
from worker.backends.base import Backend
from worker.backends.synthetic import SyntheticBackend
from worker.node import Node


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or condition}")
        await asyncio.sleep(0.01)  # noqa: sleep-ok - the polling interval under a deadline


async def connect(url: str) -> Client:
    """A test connection that fails fast."""
    return await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=2
    )


class Federation:
    """An in-process gateway and nodes, each on its own NATS connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.gateways: list[GatewayService] = []
        self.nodes: dict[str, Node] = {}
        self._conns: list[Client] = []

    async def gateway(self, config: GatewayConfig | None = None, **kwargs: Any) -> GatewayService:
        nc = await connect(self.url)
        self._conns.append(nc)
        svc = GatewayService(nc, config or GatewayConfig(**kwargs))
        await svc.start()
        self.gateways.append(svc)
        return svc

    async def node(self, node_id: str, backend: Backend | None = None, **kwargs: Any) -> Node:
        nc = await connect(self.url)
        self._conns.append(nc)
        kwargs.setdefault("heartbeat_interval_s", 0.2)
        node = Node(nc, backend or SyntheticBackend(), node_id=node_id, **kwargs)
        await node.start()
        self.nodes[node_id] = node
        return node

    async def client(self) -> Client:
        nc = await connect(self.url)
        self._conns.append(nc)
        return nc

    async def seen(self, *node_ids: str, timeout: float = 10.0) -> None:
        """Wait until every gateway's catalog holds these nodes."""
        await eventually(
            lambda: all(g.catalog.node(n) is not None for g in self.gateways for n in node_ids),
            timeout,
            f"gateways see {node_ids}",
        )

    async def close(self) -> None:
        for node in self.nodes.values():
            node.drain_timeout_s = 0.5
            await node.stop()
        for gw in self.gateways:
            await gw.stop(grace_s=0.5)
        for nc in self._conns:
            if not nc.is_closed:
                await nc.close()


@asynccontextmanager
async def federation(url: str):  # type: ignore[no-untyped-def]
    fed = Federation(url)
    try:
        yield fed
    finally:
        await fed.close()


def fedgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedgate.cli", *args]


class Proc:
    """A real fedgate child process (worker or gateway)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, FEDGATE_LOG_LEVEL="warning")
        self.args = args
        self.proc = subprocess.Popen(fedgate_cmd(*args), env=env, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
