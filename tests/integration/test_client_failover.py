"""The Python client survives the loss of the gateway holding its request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from shared.client import FedClient
from tests.helpers import eventually, federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

MODELS = {"m": ("generate",)}


async def test_request_moves_to_another_gateway_when_its_gateway_dies(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw_a = await fed.gateway(gateway_id="gw-a")
        gw_b = await fed.gateway(gateway_id="gw-b")
        await fed.node("w1", SyntheticBackend(SyntheticOptions(ttft_ms=400)), models=MODELS)
        await fed.seen("w1")
        client = FedClient(await fed.client(), liveness_s=0.1)
        task = asyncio.create_task(client.infer("generate", "survive", request_id="idem-1"))
        await eventually(lambda: gw_a.in_flight + gw_b.in_flight == 1, 5, "request accepted")
        holder, other = (gw_a, gw_b) if gw_a.in_flight else (gw_b, gw_a)
        await holder.nc.close()  # the gateway's process dies: its subscriptions vanish
        result = await asyncio.wait_for(task, 10)
        assert result.output == expected_text("m", "survive")
        assert result.result.request_id == "idem-1"
        # served by the survivor (at least once: under heavy load a slow answer can race
        # a liveness check and be asked for again; the caller still gets one answer). The
        # node answers the caller directly: the gateway's copy, and its count, may come
        # after the caller has the answer (a fresh-clone run saw 0 at this line).
        await eventually(
            lambda: other.stats.snapshot().successful_requests >= 1, 5, "survivor counted it"
        )


async def test_stream_moves_before_its_first_chunk(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw_a = await fed.gateway(gateway_id="gw-a")
        gw_b = await fed.gateway(gateway_id="gw-b")
        await fed.node("w1", SyntheticBackend(SyntheticOptions(ttft_ms=400)), models=MODELS)
        await fed.seen("w1")
        client = FedClient(await fed.client(), liveness_s=0.1)

        async def consume() -> str:
            async with client.stream("generate", "again", request_id="idem-2") as stream:
                return "".join([c.text async for c in stream])

        task = asyncio.create_task(consume())
        await eventually(lambda: gw_a.in_flight + gw_b.in_flight == 1, 5, "request accepted")
        holder = gw_a if gw_a.in_flight else gw_b
        await holder.nc.close()
        assert await asyncio.wait_for(task, 10) == expected_text("m", "again")


async def test_resent_stream_continues_on_the_new_inbox_with_a_replay(nats_url: str) -> None:
    """A caller that lost what the gateway relayed resends (same request id, Fed-Ack):
    the gateway moves the stream to the new reply subject and replays it from seq 1."""
    async with federation(nats_url) as fed:
        await fed.gateway()
        await fed.node(
            "w1", SyntheticBackend(SyntheticOptions(token_interval_ms=30)), models=MODELS
        )
        await fed.seen("w1")
        nc = await fed.client()
        first: asyncio.Queue[Any] = asyncio.Queue()
        second: asyncio.Queue[Any] = asyncio.Queue()
        await nc.subscribe("first", cb=first.put)
        await nc.subscribe("second", cb=second.put)
        body = b'{"input":"replay","stream":true,"request_id":"rp-1","params":{"max_tokens":12}}'
        await nc.publish("infer.generate", body, reply="first", headers={"Fed-Ack": "1"})
        ack = await asyncio.wait_for(first.get(), 5)
        assert "Fed-Liveness" in ack.headers
        for _ in range(3):  # three chunks reach the first inbox ... then it is "lost"
            assert (await asyncio.wait_for(first.get(), 5)).data
        await nc.publish("infer.generate", body, reply="second", headers={"Fed-Ack": "1"})
        seqs, text = [], ""
        while True:
            msg = await asyncio.wait_for(second.get(), 5)
            if not msg.data:
                if "Fed-Liveness" in (msg.headers or {}):
                    continue  # the new ack
                assert msg.headers["Fed-Status"] == "ok", msg.headers
                break
            chunk = json.loads(msg.data)
            seqs.append(chunk["seq"])
            text += chunk["text"]
        assert seqs == list(range(1, 13))
        assert text == expected_text("m", "replay", None, 12)
