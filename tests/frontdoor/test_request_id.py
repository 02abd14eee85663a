"""Two tenants (API keys) sending the same X-Request-Id at the same time each get the
answer to their own prompt; within one tenant the second is a 409 (issue 11, case c07)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from gateway.http import FrontDoor
from shared.config import GatewayConfig
from tests.helpers import federation
from tests.rawnode import RawNode, result


async def slow_echo(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    await asyncio.sleep(0.5)  # sleep-ok: a node's generation time: calls overlap
    await node.nc.publish(
        reply, result(node, dispatch, "ANSWER TO " + dispatch["request"]["input"])
    )


async def test_same_x_request_id_two_tenants(nats_url: str) -> None:
    keys = {"key-a": "tenant-a", "key-b": "tenant-b"}
    async with federation(nats_url) as fed:
        gateway = await fed.gateway(GatewayConfig(api_keys=keys))
        front = FrontDoor(gateway, port=0)
        await front.start()
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        base = f"http://127.0.0.1:{front.port}/v1/chat/completions"
        try:
            async with aiohttp.ClientSession() as http:

                async def call(key: str, text: str, delay: float) -> tuple[int, Any]:
                    await asyncio.sleep(delay)  # sleep-ok: the second caller arrives later
                    headers = {"X-Request-Id": "shared-1", "Authorization": f"Bearer {key}"}
                    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
                    async with http.post(base, json=body, headers=headers) as resp:
                        return resp.status, await resp.json()

                (sa, a), (sb, b), (sc, c) = await asyncio.gather(
                    call("key-a", "secret of a", 0.0),
                    call("key-b", "secret of b", 0.1),
                    call("key-a", "another of a", 0.2),
                )
        finally:
            await front.stop()
            await node.stop()
        assert sa == 200 and a["choices"][0]["message"]["content"] == "ANSWER TO secret of a"
        assert sb == 200 and b["choices"][0]["message"]["content"] == "ANSWER TO secret of b"
        assert sc == 409 and c["error"]["code"] == "duplicate", c
        ran = sorted(d["request"]["input"] for d in node.work)
        assert ran == ["secret of a", "secret of b"], json.dumps(ran)


async def test_without_api_keys_nats_callers_never_meet_http_ids(nats_url: str) -> None:
    """No API keys: a NATS caller reusing an HTTP caller's id (untenanted, or claiming the
    reserved tenant) neither collides with nor cancels it (the trial of issue 11
    cancelled an HTTP caller's request by its id)."""
    async with federation(nats_url) as fed:
        gateway = await fed.gateway(GatewayConfig())
        front = FrontDoor(gateway, port=0)
        await front.start()
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        nc = await fed.client()
        base = f"http://127.0.0.1:{front.port}/v1/chat/completions"
        try:
            async with aiohttp.ClientSession() as http:

                async def call() -> tuple[int, Any]:
                    headers = {"X-Request-Id": "shared-2"}
                    body = {"model": "m", "messages": [{"role": "user", "content": "mine"}]}
                    async with http.post(base, json=body, headers=headers) as resp:
                        assert resp.headers["X-Request-Id"] == "shared-2"
                        return resp.status, await resp.json()

                async def meddle() -> tuple[Any, Any]:
                    await asyncio.sleep(0.2)  # sleep-ok: while the HTTP call is in flight
                    await nc.publish("fed.cancel.shared-2", b"")
                    reserved = json.dumps({"tenant_id": "http-anonymous"}).encode()
                    await nc.publish("fed.cancel.shared-2", reserved)
                    own = json.dumps({"input": "theirs", "request_id": "shared-2"}).encode()
                    other = await nc.request("infer.generate", own, timeout=5)
                    claim = json.dumps(
                        {"input": "x", "request_id": "shared-3", "tenant_id": "http-anonymous"}
                    ).encode()
                    refused = await nc.request("infer.generate", claim, timeout=5)
                    return other, refused

                (status, answer), (other, refused) = await asyncio.gather(call(), meddle())
        finally:
            await front.stop()
            await node.stop()
        assert status == 200 and answer["choices"][0]["message"]["content"] == "ANSWER TO mine"
        assert not (other.headers or {}).get("Fed-Error"), other.headers
        assert json.loads(other.data)["output"] == "ANSWER TO theirs"
        assert (refused.headers or {}).get("Fed-Error") == "bad_request", refused.headers
        assert "reserved" in (refused.headers or {}).get("Nats-Service-Error", "")
