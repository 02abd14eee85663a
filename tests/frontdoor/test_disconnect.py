"""An HTTP client that goes away stops the work on its node at once.

A raw node takes the dispatch and never answers; the HTTP client disconnects as soon as
the node holds the job (before any token), streaming or not. The node must receive
``fed.node.<id>.cancel`` for that request within about a second, and the gateway must
log no error for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import pytest

from tests.frontdoor.conftest import Door
from tests.helpers import eventually
from tests.rawnode import RawNode, canary_ok

MODEL = "slow"


async def hold(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    """Take the job and never answer (a long time to first token)."""
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ("/v1/completions", {"prompt": "hi", "stream": True}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
    ids=["chat", "chat-stream", "completion-stream", "completion"],
)
async def test_client_disconnect_cancels_on_the_node(
    door: Door, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any]
) -> None:
    caplog.set_level(logging.DEBUG)
    nc = await door.fed.client()
    node = await RawNode(nc, "raw-slow", canary_ok(hold), model=MODEL).start()
    try:
        await door.fed.seen("raw-slow")
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        request = asyncio.create_task(session.post(door.base + path, json={"model": MODEL, **body}))
        await eventually(lambda: bool(node.work), 5, "the node holds the job")
        request_id = node.work[0]["request_id"]
        left = time.monotonic()
        request.cancel()  # the client goes away before the first token
        await session.close()
        await asyncio.wait_for(node.cancel_event.wait(), 2.0)
        assert time.monotonic() - left < 1.0
        assert request_id in node.cancels
    finally:
        await node.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("client went away" in r.getMessage() for r in caplog.records)
    async with door.http.get(door.base + "/v1/models") as resp:
        assert resp.status == 200


async def one_token_then_hold(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    """A first chunk, then a long silence (the gateway's liveness pings keep it alive)."""
    chunk = {"seq": 1, "text": "first ", "tokens": 1}
    await node.nc.publish(reply, json.dumps(chunk).encode())
    await asyncio.Event().wait()


async def test_client_disconnect_mid_stream_cancels_on_the_node(
    door: Door, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nc = await door.fed.client()
    node = await RawNode(nc, "raw-mid", canary_ok(one_token_then_hold), model=MODEL).start()
    try:
        await door.fed.seen("raw-mid")
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        body = {"model": MODEL, "prompt": "hi", "stream": True}
        resp = await session.post(door.base + "/v1/completions", json=body)
        assert resp.status == 200
        line = await resp.content.readline()
        assert b"first" in line  # the first token reached the client
        request_id = node.work[0]["request_id"]
        left = time.monotonic()
        resp.close()
        await session.close()
        await asyncio.wait_for(node.cancel_event.wait(), 2.0)
        assert time.monotonic() - left < 1.0
        assert request_id in node.cancels
    finally:
        await node.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
