"""Fixtures of the front-door tests: an in-process gateway with its HTTP front door on a
real nats-server, and nodes behind it (openai backends in front of scripted upstreams,
synthetic ones, or raw NATS nodes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from gateway.http import FrontDoor
from gateway.service import GatewayService
from shared.config import GatewayConfig
from tests.helpers import Federation
from tests.llm.conftest import module_nats  # noqa: F401 - the module-wide nats-server
from tests.llm.upstream import Upstream
from worker.backends.openai import OpenAIBackend, OpenAIOptions
from worker.node import Node


@dataclass
class Door:
    """A gateway, its front door and what stands behind them."""

    fed: Federation
    gateway: GatewayService
    front: FrontDoor
    base: str
    http: aiohttp.ClientSession
    upstreams: list[Upstream] = field(default_factory=list)

    async def openai_node(
        self, node_id: str, model: str, upstream: Upstream | None = None, **options: Any
    ) -> tuple[Node, Upstream]:
        """A node with the openai backend in front of ``upstream`` (a new one by default)."""
        if upstream is None:
            upstream = await Upstream().start()
            self.upstreams.append(upstream)
        backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url, **options))
        node = await self.fed.node(node_id, backend, models={model: ("generate", "embed")})
        await self.fed.seen(node_id)
        return node, upstream

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        """POST JSON; the status and the JSON answer."""
        async with self.http.post(self.base + path, json=body, **kwargs) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def events(self, path: str, body: Any) -> list[dict[str, Any]]:
        """POST a streaming request; the JSON events up to ``[DONE]``."""
        async with self.http.post(self.base + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return sse_events(await resp.read())


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a server-sent-events body, up to ``[DONE]``."""
    import json

    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                break
            out.append(json.loads(line[6:]))
    return out


@pytest.fixture
async def door(nats_url: str) -> AsyncIterator[Door]:
    fed = Federation(nats_url)
    gateway = await fed.gateway(GatewayConfig(max_retries=2))
    front = FrontDoor(gateway, port=0)
    await front.start()
    door = None
    try:
        async with aiohttp.ClientSession() as http:
            door = Door(fed, gateway, front, f"http://127.0.0.1:{front.port}", http)
            yield door
    finally:
        await front.stop()
        await fed.close()
        for upstream in door.upstreams if door else ():
            await upstream.stop()
