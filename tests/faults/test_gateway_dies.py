"""A gateway process dies mid-stream (SIGKILL): with direct replies the stream finishes.

Real processes: one ``fedgate gateway``, one ``fedgate worker``, a raw caller (as
``nats req --wait-for-empty``) and fedgate's client. The node answers the caller itself,
so losing the gateway loses nothing the stream needs; with direct replies off (the
relay), the same kill ends the stream ``Interrupted``, as it always did.
"""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from shared import errors
from shared.client import FedClient
from tests.helpers import Proc, eventually, processes
from tests.integration.test_protocol import StreamCall
from worker.backends.synthetic import expected_text


def worker(url: str, interval_ms: int) -> Proc:
    return Proc(
        "worker", "--nats", url, "--node-id", "w1", "--model", "m", "--capability",
        "generate", "--token-interval-ms", str(interval_ms), "--heartbeat-interval", "0.2",
    )  # fmt: skip


async def serving(nc: Client) -> None:
    """Wait until a gateway answers and its catalog holds w1."""

    async def ready() -> bool:
        try:
            view = await nc.request("fed.gateway.nodes", b"", timeout=0.5)
        except Exception:
            return False
        return any(n["node_id"] == "w1" for n in json.loads(view.data)["nodes"])

    await eventually(ready, 30, "gateway up, w1 joined")


async def test_a_raw_callers_stream_finishes_after_its_gateway_is_killed(
    nats_url: str, nc: Client
) -> None:
    with processes() as procs:
        gateway = Proc("gateway", "--nats", nats_url, "--gateway-id", "gw-a")
        procs += [gateway, worker(nats_url, 30)]
        await serving(nc)
        body = {"input": "orphan", "stream": True, "params": {"max_tokens": 60, "seed": 5}}
        call = await StreamCall.open(nc, "infer.generate", body)
        await call.until_chunks(5)
        gateway.kill()  # SIGKILL: no goodbye, its subscriptions gone with its connection
        terminal = await call.finish(timeout=10)
        call.assert_contiguous()
        assert call.text == expected_text("m", "orphan", 5, 60)
        hdrs = terminal.headers or {}
        assert (hdrs.get("Fed-Status"), hdrs.get("Fed-Served-By"), hdrs.get("Fed-Tokens")) == (
            "ok", "w1", "60",
        ), hdrs  # fmt: skip


async def test_a_fedclient_stream_outlives_its_gateway(nats_url: str, nc: Client) -> None:
    """Slower tokens than the client's liveness check: it finds the gateway gone, and
    goes on because the chunks come from the node itself."""
    with processes() as procs:
        gateway = Proc("gateway", "--nats", nats_url, "--gateway-id", "gw-a")
        procs += [gateway, worker(nats_url, 250)]
        await serving(nc)
        client = FedClient(nc, liveness_s=0.1)
        texts: list[str] = []
        async with client.stream("generate", "slow orphan", params={"max_tokens": 12}) as s:
            async for chunk in s:
                texts.append(chunk.text)
                if len(texts) == 2:
                    gateway.kill()
        assert "".join(texts) == expected_text("m", "slow orphan", None, 12)
        assert (s.served_by, s.tokens, s.attempts) == ("w1", 12, 1)


async def test_with_direct_replies_off_the_stream_is_interrupted(nats_url: str, nc: Client) -> None:
    with processes() as procs:
        gateway = Proc("gateway", "--nats", nats_url, "--gateway-id", "gw-a", "--no-direct-replies")
        procs += [gateway, worker(nats_url, 50)]
        await serving(nc)
        client = FedClient(nc, liveness_s=0.1)
        with pytest.raises(errors.Interrupted):
            async with client.stream("generate", "relayed", params={"max_tokens": 100}) as s:
                async for _ in s:
                    gateway.kill()
