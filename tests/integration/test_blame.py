"""Blame the right party, one retry budget, honest errors (docs/routing.md, "Blame").

Nodes are played over raw NATS (tests/rawnode.py) so that each answers exactly the
failure under test; the gateway runs in-process on a real nats-server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.client import Client

from gateway.service import GatewayService
from tests.helpers import Federation, eventually, federation
from tests.integration.test_protocol import fast
from tests.rawnode import RawNode, echo, error, result
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def failures(gw: GatewayService, node_id: str) -> tuple[int, int]:
    """(health's consecutive failures, the circuit's failures) of a node."""
    snap = gw.health.get_cached_health(node_id)
    return (snap.consecutive_failures if snap else 0, gw.breaker.failures(node_id))


async def nodes(fed: Federation, **behaviours: Any) -> dict[str, RawNode]:
    out = {}
    for node_id, behaviour in behaviours.items():
        out[node_id] = await RawNode(await fed.client(), node_id, behaviour).start()
    await fed.seen(*behaviours)
    return out


async def request(nc: Client, body: dict[str, Any], timeout: float = 10.0) -> Any:
    return await nc.request("infer.generate", json.dumps(body).encode(), timeout=timeout)


async def collect(nc: Client, body: dict[str, Any], timeout: float = 10.0) -> list[Any]:
    """Every message of a streamed reply, to its empty-body end."""
    inbox = nc.new_inbox()
    got: list[Any] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        got.append(msg)
        if not msg.data:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_msg)
    await nc.publish("infer.generate", json.dumps(body).encode(), reply=inbox)
    await asyncio.wait_for(done.wait(), timeout)
    await sub.unsubscribe()
    return got


def kind(msg: Any) -> str | None:
    return (msg.headers or {}).get("Fed-Error")


async def test_misconfigured_node_is_retried_elsewhere_and_blamed(nats_url: str) -> None:
    """A node whose engine lacks the model (503 node_unavailable, e.g. upstream 404):
    every request still succeeds on the healthy node; only the bad node is penalised."""
    async with federation(nats_url) as fed:
        gw = await fed.gateway(fast(strategy="round_robin"))
        bad = error(503, "node_unavailable", "upstream 404: model `m` does not exist")
        ns = await nodes(fed, bad=bad, good=echo)
        nc = await fed.client()
        for i in range(10):
            msg = await request(nc, {"input": f"hello {i}"})
            assert kind(msg) is None, msg.headers
            assert json.loads(msg.data)["served_by"] == "good"
        assert failures(gw, "good") == (0, 0)
        assert failures(gw, "bad")[0] >= 1
        assert len(ns["good"].work) == 10


async def poison_or_echo(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    if "poison" in dispatch["request"].get("input", ""):
        await error(502, "upstream_error", "upstream 500: the engine crashed")(
            node, dispatch, reply
        )
    else:
        await echo(node, dispatch, reply)


async def test_poison_request_blames_no_node_and_locks_nobody_out(nats_url: str) -> None:
    """A prompt that makes every engine fail: tried on poison_after_nodes (2) nodes, then
    502 upstream_error to its caller; no node is penalised; others keep being served."""
    async with federation(nats_url) as fed:
        gw = await fed.gateway(fast())
        ns = await nodes(fed, n1=poison_or_echo, n2=poison_or_echo, n3=poison_or_echo)
        nc = await fed.client()
        t0 = time.monotonic()
        for _ in range(20):
            msg = await request(nc, {"input": "poison pill", "tenant_id": "bad"})
            assert kind(msg) == "upstream_error", msg.headers
            assert msg.headers["Nats-Service-Error-Code"] == "502"
            assert msg.headers["Fed-Attempts"] == "2"
            ok = await request(nc, {"input": "fine", "tenant_id": "good"})
            assert kind(ok) is None, ok.headers
        assert time.monotonic() - t0 < 10
        for node_id in ns:
            assert failures(gw, node_id) == (0, 0), node_id
        poison = sum(1 for n in ns.values() for d in n.work if "poison" in d["request"]["input"])
        assert poison == 40


async def test_429_storm_is_bounded_by_the_retry_budget(nats_url: str) -> None:
    """Two busy nodes: at most max_retries + 1 dispatches, then 429 with Retry-After,
    long before the caller's 30 s deadline."""
    async with federation(nats_url) as fed:
        await fed.gateway(fast(max_retries=3, request_timeout_s=30.0))
        busy = error(429, "overloaded", "at capacity")
        ns = await nodes(fed, n1=busy, n2=busy)
        nc = await fed.client()
        t0 = time.monotonic()
        msg = await request(nc, {"input": "hi", "timeout_ms": 30_000}, timeout=35)
        elapsed = time.monotonic() - t0
        assert kind(msg) == "overloaded", msg.headers
        assert int(msg.headers["Retry-After"]) >= 1
        dispatches = len(ns["n1"].work) + len(ns["n2"].work)
        assert dispatches == 4, dispatches
        assert elapsed < 3.0, elapsed


async def test_retry_after_is_honoured_and_answered_at_once(nats_url: str) -> None:
    """Nodes busy for 10 s (Retry-After) and a 2 s deadline: no re-dispatch inside the
    Retry-After, and a 429 with Retry-After now rather than at the deadline."""
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        busy = error(429, "overloaded", "at capacity", **{"Retry-After": "10"})
        ns = await nodes(fed, n1=busy, n2=busy)
        nc = await fed.client()
        t0 = time.monotonic()
        msg = await request(nc, {"input": "hi", "timeout_ms": 2000})
        assert kind(msg) == "overloaded", msg.headers
        assert 9 <= int(msg.headers["Retry-After"]) <= 10
        assert time.monotonic() - t0 < 1.0
        assert len(ns["n1"].work) == 1 and len(ns["n2"].work) == 1
        # Still inside their Retry-After: the next request is refused without a dispatch.
        again = await request(nc, {"input": "hi", "timeout_ms": 2000})
        assert kind(again) == "overloaded"
        assert len(ns["n1"].work) + len(ns["n2"].work) == 2


async def one_chunk_then_silence(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    await node.nc.publish(reply, b'{"seq": 1, "text": "a ", "tokens": 1}')
    await asyncio.Event().wait()  # alive (answers pings) but produces nothing more


async def test_deadline_mid_stream_is_504(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway(fast(stall_timeout_s=30.0))
        await nodes(fed, n1=one_chunk_then_silence)
        nc = await fed.client()
        inbox = nc.new_inbox()
        got: list[Any] = []
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            got.append(msg)
            if not msg.data:
                done.set()

        await nc.subscribe(inbox, cb=on_msg)
        body = {"input": "x", "stream": True, "timeout_ms": 500}
        await nc.publish("infer.generate", json.dumps(body).encode(), reply=inbox)
        await asyncio.wait_for(done.wait(), 5)
        assert len(got) == 2
        assert got[-1].headers["Fed-Error"] == "timeout"
        assert got[-1].headers["Nats-Service-Error-Code"] == "504"
        assert failures(gw, "n1") == (0, 0)  # the caller's deadline, not the node's fault


async def slow_stream(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    if not dispatch["request"].get("stream"):
        await asyncio.sleep(2.5)  # sleep-ok: a long generation
        await node.nc.publish(reply, result(node, dispatch, "done"))
        return
    for i in range(1, 50):
        await asyncio.sleep(0.05)  # sleep-ok: a node's generation time
        await node.nc.publish(reply, json.dumps({"seq": i, "text": "w ", "tokens": 1}).encode())
    await node.nc.publish(reply, b"")


async def test_callers_short_deadlines_blame_no_node(nats_url: str) -> None:
    """Streams whose own timeout_ms expires leave the node usable for everyone."""
    async with federation(nats_url) as fed:
        gw = await fed.gateway(fast())
        await nodes(fed, n1=slow_stream)
        nc = await fed.client()
        for stream in (False, True, False):
            body = {"input": "x", "timeout_ms": 200, "stream": stream}
            if stream:
                msgs = await collect(nc, body)
                assert len(msgs) > 1 and kind(msgs[-1]) == "timeout"
            else:
                assert kind(await request(nc, body)) == "timeout"
        assert failures(gw, "n1") == (0, 0)
        ok = await collect(nc, {"input": "x", "timeout_ms": 5000, "stream": True})
        assert ok[-1].headers.get("Fed-Status") == "ok", ok[-1].headers


async def test_errors_carry_the_callers_traceparent(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        nc = await fed.client()
        headers = {"traceparent": TRACE}
        bad = await nc.request("infer.generate", b"[1,", headers=headers, timeout=5)
        assert kind(bad) == "bad_request" and bad.headers["traceparent"] == TRACE
        none = await nc.request("infer.generate", b"{}", headers=headers, timeout=5)
        assert kind(none) == "no_capacity" and none.headers["traceparent"] == TRACE


async def test_embed_does_not_stream(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        nc = await fed.client()
        msg = await nc.request("infer.embed", b'{"input": "x", "stream": true}', timeout=5)
        assert kind(msg) == "bad_request"
        assert "stream" in msg.headers["Nats-Service-Error"]


def three_then_die(go: asyncio.Event) -> Any:
    async def behave(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
        for i in range(1, 4):
            chunk = {"seq": i, "text": f"a{i} ", "tokens": 2}
            await node.nc.publish(reply, json.dumps(chunk).encode())
        await go.wait()
        await node.stop()  # gone: pings get no responders, the gateway fails over

    return behave


async def resume_own_count(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    """Continues a resumed stream; its Fed-Tokens counts only its own tokens."""
    assert dispatch["resume"]["tokens"] == 6
    for i in range(1, 3):
        chunk = {"seq": i, "text": f"b{i} ", "tokens": 3}
        await node.nc.publish(reply, json.dumps(chunk).encode())
    await node.nc.publish(reply, b"", headers={"Fed-Tokens": "6"})


async def test_tokens_after_failover_count_what_the_caller_received(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        go = asyncio.Event()
        first = await RawNode(await fed.client(), "a", three_then_die(go)).start()
        await fed.seen("a")
        nc = await fed.client()
        inbox = nc.new_inbox()
        got: list[Any] = []
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            got.append(msg)
            if not msg.data:
                done.set()

        await nc.subscribe(inbox, cb=on_msg)
        body = {"input": "x", "stream": True, "model": "m"}
        await nc.publish("infer.generate", json.dumps(body).encode(), reply=inbox)
        await eventually(lambda: len(got) == 3, 5, "three chunks from a")
        await RawNode(await fed.client(), "b", resume_own_count).start()
        await fed.seen("b")
        go.set()
        await asyncio.wait_for(done.wait(), 10)
        chunks = [json.loads(m.data) for m in got[:-1]]
        assert [c["seq"] for c in chunks] == [1, 2, 3, 4, 5]
        assert got[-1].headers.get("Fed-Status") == "ok", got[-1].headers
        assert got[-1].headers["Fed-Served-By"] == "b"
        assert int(got[-1].headers["Fed-Tokens"]) == sum(c["tokens"] for c in chunks) == 12
        assert len(first.work) == 1


async def test_a_full_queue_answers_429_with_retry_after(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast(max_queue=0))
        slow = SyntheticBackend(SyntheticOptions(token_interval_ms=50))
        await fed.node("n1", slow, capacity=1, models={"m": ("generate",)})
        await fed.seen("n1")
        nc = await fed.client()
        hold = await collect_start(nc, {"input": "x", "stream": True, "params": {"max_tokens": 50}})
        msg = await request(nc, {"input": "y"})
        assert kind(msg) == "overloaded", msg.headers
        assert msg.headers["Retry-After"] == "1"
        await hold.unsubscribe()


async def collect_start(nc: Client, body: dict[str, Any]) -> Any:
    """Start a stream and wait for its first chunk (it then holds its node's slot)."""
    inbox = nc.new_inbox()
    first = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        first.set()

    sub = await nc.subscribe(inbox, cb=on_msg)
    await nc.publish("infer.generate", json.dumps(body).encode(), reply=inbox)
    await asyncio.wait_for(first.wait(), 5)
    return sub


async def test_no_node_for_the_model_names_the_model(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        await nodes(fed, n1=echo)
        nc = await fed.client()
        msg = await request(nc, {"input": "x", "model": "twin"})
        assert kind(msg) == "no_capacity"
        assert "twin" in msg.headers["Nats-Service-Error"]
