"""Deterministic reproductions of contract gaps the fault tests ran into (now fixed).

- The Python client must not turn a lost chunk into a successful, shorter stream. NATS
  delivers at most once: a chunk in transit through a server that dies is gone (the
  cluster test in test_nats_faults.py sees it happen). The gateway cannot know; the
  caller can, since ``seq`` rises by exactly one. A stand-in gateway answers with a gap.
- A lost ack must not turn a request being served into a ``409 duplicate`` error.
- A node that starts draining after it was chosen must not surface as a non-contract
  ``503 unavailable``.
- A restarted worker (new incarnation) must not inherit the open circuit of the process
  that died: under the kill-every-second chaos every worker ends up circuit-open.
"""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import errors
from shared.client import FedClient


async def test_client_fails_a_stream_with_a_gap(nc: Client) -> None:
    async def fake_gateway(msg: Msg) -> None:
        assert msg.reply
        await nc.publish(msg.reply, b'{"seq":1,"text":"a ","tokens":1}')
        await nc.publish(msg.reply, b'{"seq":3,"text":"c ","tokens":1}')  # seq 2 was lost
        await nc.publish(msg.reply, b"", headers={"Fed-Status": "ok", "Fed-Tokens": "3"})

    await nc.subscribe("infer.generate", cb=fake_gateway)
    await nc.flush()
    client = FedClient(nc)
    with pytest.raises(errors.Interrupted):
        async with client.stream("generate", "x") as stream:
            async for _ in stream:
                pass


async def test_lost_ack_does_not_turn_into_a_duplicate_error(nats_url: str) -> None:
    from tests.helpers import federation
    from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

    async with federation(nats_url) as fed:
        await fed.gateway()
        await fed.node(
            "w1", SyntheticBackend(SyntheticOptions(ttft_ms=800)), models={"m": ("generate",)}
        )
        await fed.seen("w1")
        client = FedClient(await fed.client(), ack_timeout_s=0.3)
        deliver = client._on_msg
        dropped: list[str] = []

        async def lossy(msg: Msg) -> None:  # the first ack is lost in transit
            if not dropped and "Fed-Liveness" in (msg.headers or {}):
                dropped.append(msg.subject)
                return
            await deliver(msg)

        client._on_msg = lossy  # type: ignore[method-assign]
        result = await client.infer("generate", "once", request_id="lost-ack")
        assert dropped and result.output == expected_text("m", "once")


async def test_node_draining_after_routing_is_all_unhealthy(nats_url: str) -> None:
    from tests.helpers import federation

    async with federation(nats_url) as fed:
        await fed.gateway(probe_interval_s=60)
        node = await fed.node("w1", models={"m": ("generate",)})
        await fed.seen("w1")
        node.draining = True  # answers node_draining before its next heartbeat says so
        msg = await node.nc.request("infer.generate", b"{}", timeout=5)
        assert (msg.headers or {}).get("Fed-Error") == "all_unhealthy", msg.headers


async def test_new_incarnation_starts_with_a_closed_circuit(nats_url: str) -> None:
    from gateway.breaker import CircuitState
    from tests.helpers import eventually, federation
    from worker.node import Node

    async with federation(nats_url) as fed:
        svc = await fed.gateway(probe_interval_s=60)
        old = await fed.node("w1", models={"m": ("generate",)})
        await fed.seen("w1")
        for _ in range(svc.breaker.config.failure_threshold):  # as no-responders after a crash
            svc.breaker.record_failure("w1")
        assert svc.breaker.state("w1") is CircuitState.OPEN
        await old.nc.close()  # the process dies
        new = Node(
            await fed.client(),
            old.backend,
            node_id="w1",
            models={"m": ("generate",)},
            heartbeat_interval_s=0.2,
        )
        await new.start()
        await eventually(
            lambda: (n := svc.catalog.node("w1")) is not None and n.incarnation == new.incarnation,
            5,
            "restarted",
        )
        try:
            assert svc.breaker.state("w1") is CircuitState.CLOSED
        finally:
            await new.stop()
