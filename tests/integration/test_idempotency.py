"""Request identity across gateways (gateway/idempotency.py), on a real nats-server
with JetStream: a resend through another gateway is replayed or handed to the gateway
running it, never run twice; another caller's body under that id is refused there too;
without JetStream, requests are served as before, with one warning per gateway.

Two in-process gateways share the bucket ``fedgate_requests`` and ``fed.takeover.*``
(the internal root) but listen on two public roots, so that a test chooses which
gateway a request reaches: ``infer.>`` is gw-a, ``inferb.>`` is gw-b. (Through the
queue group a resend reaches whichever gateway NATS picks; tests/faults/
test_gateway_killed_resend.py does that with real processes.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.claims import State, claim_decoder, key_of
from gateway.registry import BUCKET
from gateway.service import GatewayService
from shared.client import FedClient
from shared.config import GatewayConfig
from tests.helpers import Federation, eventually, federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

A, B = "infer.generate", "inferb.generate"


class Caller:
    """A raw caller (``Fed-Ack`` unless told otherwise) reading one request to its end."""

    def __init__(self, nc: Client, subject: str, body: dict[str, Any], ack: bool = True) -> None:
        self.nc = nc
        self.subject = subject
        self.body = body
        self.ack = ack
        self.messages: list[Msg] = []
        self.text = ""
        self.errors: list[str] = []
        self.ends = 0
        self.done = asyncio.Event()

    async def send(self) -> Caller:
        inbox = self.nc.new_inbox()
        await self.nc.subscribe(inbox, cb=self._on_msg)
        headers = {"Fed-Ack": "1"} if self.ack else None
        await self.nc.publish(self.subject, json.dumps(self.body).encode(), inbox, headers)
        return self

    async def end(self, timeout: float = 10.0) -> Msg:
        await asyncio.wait_for(self.done.wait(), timeout)
        return self.messages[-1]

    async def _on_msg(self, msg: Msg) -> None:
        self.messages.append(msg)
        hdrs = msg.headers or {}
        if "Fed-Liveness" in hdrs and not msg.data:
            return  # the ack
        if "Fed-Error" in hdrs:
            self.errors.append(hdrs["Fed-Error"])
        elif self.body.get("stream") and msg.data:
            self.text += json.loads(msg.data)["text"]
            return
        elif msg.data:
            self.text = json.loads(msg.data)["output"]
        self.ends += 1
        self.done.set()


async def two_gateways(fed: Federation, token_interval_ms: float = 0.0) -> tuple[Any, ...]:
    gw_a = await fed.gateway(gateway_id="gw-a", probe_interval_s=60.0)
    gw_b = await fed.gateway(gateway_id="gw-b", public_root="inferb", probe_interval_s=60.0)
    backend = SyntheticBackend(SyntheticOptions(token_interval_ms=token_interval_ms))
    node = await fed.node("w1", backend, models={"m": ("generate",)})
    await fed.seen("w1")
    return gw_a, gw_b, node, await fed.client()


async def claimed(nc: Client, request_id: str, *states: State) -> bool:
    """Whether tenant t1's ``request_id`` is claimed in the bucket (in one of ``states``)."""
    kv = await nc.jetstream().key_value(BUCKET)
    try:
        entry = await kv.get(key_of("t1", request_id))
    except Exception:
        return False
    return not states or claim_decoder.decode(entry.value or b"").state in states


def body(text: str, request_id: str, **more: Any) -> dict[str, Any]:
    return {"input": text, "request_id": request_id, "tenant_id": "t1", "model": "m", **more}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_resend_through_another_gateway_after_the_answer_is_replayed(
    js_url: str, stream: bool
) -> None:
    async with federation(js_url) as fed:
        _, gw_b, node, nc = await two_gateways(fed)
        request = body("answered once", "R1", stream=stream)
        first = await Caller(nc, A, request).send()
        answer = await first.end()
        await eventually(lambda: claimed(nc, "R1", State.DONE), 5, "gw-a kept the answer")
        again = await Caller(nc, B, request).send()
        replayed = await again.end()
        assert again.errors == [] and again.ends == 1
        assert again.text == first.text == expected_text("m", "answered once")
        for name in ("Fed-Served-By", "Fed-Request-Id", "Fed-Attempts"):
            assert (replayed.headers or {})[name] == (answer.headers or {})[name]
        if stream:
            seqs = [json.loads(m.data)["seq"] for m in again.messages if m.data]
            assert seqs and seqs == list(range(1, len(seqs) + 1))
        assert node.served == 1  # the node ran it once
        assert gw_b.claims.replayed == 1


async def test_another_body_under_the_id_is_refused_by_the_other_gateway(js_url: str) -> None:
    """While the request runs at gw-a and after it is answered; another tenant's same id
    is another request."""
    async with federation(js_url) as fed:
        _, _, node, nc = await two_gateways(fed, token_interval_ms=100)
        first = await Caller(nc, A, body("the first prompt", "R2")).send()
        await eventually(lambda: claimed(nc, "R2"), 5, "gw-a claimed R2")
        other = await Caller(nc, B, body("another prompt", "R2")).send()
        await other.end()
        assert other.errors == ["duplicate"]
        assert "already in flight with a different body" in _error_text(other)
        await first.end()
        assert first.errors == [] and first.text == expected_text("m", "the first prompt")
        await eventually(lambda: claimed(nc, "R2", State.DONE), 5, "gw-a kept the answer")
        late = await Caller(nc, B, body("another prompt", "R2")).send()
        await late.end()
        assert late.errors == ["duplicate"]
        assert "already answered with a different body" in _error_text(late)
        tenant_2 = await Caller(nc, B, {**body("another prompt", "R2"), "tenant_id": "t2"}).send()
        await tenant_2.end()
        assert tenant_2.errors == [] and tenant_2.text == expected_text("m", "another prompt")
        assert node.served == 2


async def test_a_resend_to_another_gateway_while_the_owner_runs_it_is_handed_over(
    js_url: str,
) -> None:
    """gw-b asks gw-a (``fed.takeover.gw-a``) to take the resend over: the answer goes
    to the resending caller, the subject it left gets 409, the prompt runs once."""
    async with federation(js_url) as fed:
        _, gw_b, node, nc = await two_gateways(fed, token_interval_ms=150)
        request = body("handed over", "R3", stream=True)
        first = await Caller(nc, A, request).send()
        await eventually(lambda: len(first.messages) >= 2, 5, "gw-a acked and streams")
        again = await Caller(nc, B, request).send()
        terminal = await again.end()
        assert again.errors == [] and (terminal.headers or {}).get("Fed-Status") == "ok"
        assert again.text == expected_text("m", "handed over")
        assert "duplicate" in first.errors  # told where its answer went
        assert gw_b.claims.taken_over == 1 and node.served == 1


async def test_without_jetstream_requests_are_served_with_one_warning_per_gateway(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedgate.gateway"):
        async with federation(nats_url) as fed:
            gateways: list[GatewayService] = [
                await fed.gateway(GatewayConfig(probe_interval_s=60.0)) for _ in range(2)
            ]
            await fed.node("w1", models={"m": ("generate",)})
            await fed.seen("w1")
            client = FedClient(await fed.client())
            for i in range(10):
                result = await client.infer("generate", f"no bucket {i}", model="m")
                assert result.output == expected_text("m", f"no bucket {i}")
            assert all(g.claims is not None and g.claims.registry.degraded for g in gateways)
    warnings = [r for r in caplog.records if "fedgate_requests bucket is unavailable" in r.message]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]


def _error_text(caller: Caller) -> str:
    return next(
        (m.headers or {}).get("Nats-Service-Error", "")
        for m in caller.messages
        if "Fed-Error" in (m.headers or {})
    )
