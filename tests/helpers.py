"""Test helpers: poll a condition under a deadline, a fake NATS connection for engine
tests, run real worker/gateway processes."""

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
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.nuid import NUID

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
        await asyncio.sleep(0.01)  # sleep-ok: the polling interval under a deadline


async def connect(url: str) -> Client:
    """A test connection that fails fast."""
    return await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=2
    )


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``subject`` matches ``pattern`` (``*`` one token, ``>`` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class FakeSubscription:
    """A subscription of ``FakeNats``: its subject, queue group and callback."""

    def __init__(self, nc: FakeNats, subject: str, queue: str, cb: Any) -> None:
        self.nc, self.subject, self.queue, self._cb = nc, subject, queue, cb

    async def unsubscribe(self) -> None:
        if self in self.nc.subs:
            self.nc.subs.remove(self)


class FakeNats:
    """Just enough of a nats-py ``Client`` to run a gateway with no server: what it
    publishes is recorded (``published``), its subscriptions keep their callbacks, and
    ``deliver`` hands a message to every subscription matching its subject, in order.
    ``request`` answers "no responders" unless ``answers`` has a reply for the subject."""

    def __init__(self, max_payload: int = 1 << 20) -> None:
        self.max_payload = max_payload
        self.published: list[Msg] = []
        self.subs: list[FakeSubscription] = []
        self.answers: dict[str, Msg] = {}
        self.is_connected = True
        self.is_closed = False
        self._inboxes = 0
        self._nuid = NUID()  # what nats.micro reads to name its endpoints

    def new_inbox(self) -> str:
        self._inboxes += 1
        return f"_INBOX.fake{self._inboxes}"

    async def subscribe(
        self, subject: str, queue: str = "", cb: Any = None, **_: Any
    ) -> FakeSubscription:
        sub = FakeSubscription(self, subject, queue, cb)
        self.subs.append(sub)
        return sub

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.published.append(
            Msg(self, subject=subject, reply=reply, data=payload, headers=headers)
        )  # type: ignore[arg-type]

    async def request(self, subject: str, payload: bytes = b"", **_: Any) -> Msg:
        answer = self.answers.get(subject)
        if answer is None:
            raise nats.errors.NoRespondersError
        return answer

    async def flush(self, timeout: float = 0) -> None:
        pass

    async def deliver(
        self,
        subject: str,
        data: bytes = b"",
        *,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """A message arrives on ``subject``: every matching callback runs, in order."""
        for sub in list(self.subs):
            if sub._cb is not None and matches(sub.subject, subject):
                msg = Msg(self, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]
                await sub._cb(msg)

    def sent(self, pattern: str) -> list[Msg]:
        """What was published on subjects matching ``pattern``, oldest first."""
        return [msg for msg in self.published if matches(pattern, msg.subject)]


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

    def __init__(self, *args: str, log_path: str | None = None, log_level: str = "warning") -> None:
        env = dict(os.environ, FEDGATE_LOG_LEVEL=log_level)
        self.args = args
        self.log_path = log_path
        """Where its stderr (the log) goes, if not to the test's own stderr."""
        stderr = open(log_path, "ab") if log_path else None
        self.proc = subprocess.Popen(
            fedgate_cmd(*args), env=env, stdin=subprocess.DEVNULL, stderr=stderr
        )
        if stderr is not None:
            stderr.close()  # the child has its own descriptor

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log file ("" without one)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

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
