"""The wire contract, sections 2 and 3: joining the federation, and inspection.

Heartbeats, leaves and dispatches are published by hand, as a worker (or a gateway)
written in another language would. To know that the gateway has processed a message
without sleeping, a test publishes a *sentinel* heartbeat from the same connection right
after it: one publisher, one gateway subscription, so once the sentinel shows up in
``fed.gateway.nodes`` everything published before it has been handled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.catalog import CatalogEvent
from shared.client import FedClient
from tests.helpers import Federation, eventually, federation
from tests.integration.test_protocol import (
    StreamCall,
    ask,
    assert_error,
    assert_ok_result,
    fast,
    nodes_view,
    payload,
    slow,
)
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

_sentinels = itertools.count(1)


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f


def heartbeat(node_id: str | None, incarnation: str = "i1", **fields: Any) -> bytes:
    """A heartbeat body; ``node_id=None`` leaves the field out."""
    body: dict[str, Any] = {
        "incarnation": incarnation,
        "region": "eu",
        "models": [{"model": "m", "capabilities": ["generate"]}],
        "capacity": 2,
        "in_flight": 0,
        "privacy": "internal",
        "cost": 0.5,
        "gpu": False,
        "labels": {},
        "draining": False,
        "interval_ms": 60_000,
    }
    if node_id is not None:
        body["node_id"] = node_id
    body.update(fields)
    return payload(body)


async def has_node(nc: Client, *node_ids: str) -> bool:
    """Whether the gateway's catalog holds every one of these nodes."""
    nodes = await nodes_view(nc)
    return all(n in nodes for n in node_ids)


async def processed(pub: Client, nc: Client) -> None:
    """Wait until the gateway handled every heartbeat ``pub`` published so far."""
    sentinel = f"sentinel-{next(_sentinels)}"
    await pub.publish(f"fed.heartbeat.{sentinel}", heartbeat(sentinel, models=[]))
    await eventually(lambda: has_node(nc, sentinel), 5, f"{sentinel} seen")


async def processed_leaves(pub: Client, nc: Client) -> None:
    """Wait until the gateway handled every leave ``pub`` published so far."""
    sentinel = f"sentinel-{next(_sentinels)}"
    await pub.publish(f"fed.heartbeat.{sentinel}", heartbeat(sentinel, models=[]))
    await eventually(lambda: has_node(nc, sentinel), 5, f"{sentinel} seen")
    await pub.publish(f"fed.leave.{sentinel}", b"")
    await eventually(lambda: _lacks(nc, sentinel), 5, f"{sentinel} gone")


async def _lacks(nc: Client, *node_ids: str) -> bool:
    nodes = await nodes_view(nc)
    return not any(n in nodes for n in node_ids)


async def gather_replies(nc: Client, subject: str, want: int, timeout: float = 3.0) -> list[Msg]:
    """Publish one request and collect replies until ``want`` arrived (all responders)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    replies: list[Msg] = []
    try:
        async with asyncio.timeout(timeout):
            while len(replies) < want:
                replies.append(await sub.next_msg(timeout=timeout))
    finally:
        await sub.unsubscribe()
    return replies


# -- heartbeats and leave --------------------------------------------------------------


async def test_spoofed_heartbeat_is_rejected(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await nc.publish("fed.heartbeat.good", heartbeat("good", "g1", region="eu"))
    await eventually(lambda: has_node(nc, "good"), 5)
    # The subject names one node, the body another: the gateway trusts the subject.
    await nc.publish("fed.heartbeat.evil", heartbeat("good", "g2", region="mallory"))
    await nc.publish("fed.heartbeat.good", heartbeat("evil", "g3", region="mallory"))
    await processed(nc, nc)
    nodes = await nodes_view(nc)
    assert "evil" not in nodes
    assert nodes["good"]["region"] == "eu"
    assert nodes["good"]["incarnation"] == "g1"


async def test_heartbeat_without_node_id_takes_the_subjects(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await nc.publish("fed.heartbeat.anon", heartbeat(None, "a1", region="lab", capacity=7))
    await eventually(lambda: has_node(nc, "anon"), 5)
    node = (await nodes_view(nc))["anon"]
    assert (node["region"], node["capacity"], node["incarnation"]) == ("lab", 7, "a1")


async def test_old_incarnation_is_ignored(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    # With the started_ms extension: an older process start loses.
    await nc.publish("fed.heartbeat.r1", heartbeat("r1", "old", region="a", started_ms=1000))
    await nc.publish("fed.heartbeat.r1", heartbeat("r1", "new", region="b", started_ms=2000))
    await nc.publish("fed.heartbeat.r1", heartbeat("r1", "old", region="c", started_ms=1000))
    # Without it (a worker that does not send started_ms): a replaced incarnation is retired.
    await nc.publish("fed.heartbeat.r2", heartbeat("r2", "x", region="a"))
    await nc.publish("fed.heartbeat.r2", heartbeat("r2", "y", region="b"))
    await nc.publish("fed.heartbeat.r2", heartbeat("r2", "x", region="c"))
    await processed(nc, nc)
    nodes = await nodes_view(nc)
    assert (nodes["r1"]["incarnation"], nodes["r1"]["region"]) == ("new", "b")
    assert (nodes["r2"]["incarnation"], nodes["r2"]["region"]) == ("y", "b")


async def test_node_expires_after_missed_heartbeats(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    for _ in range(6):  # 0.6 s of heartbeats at 100 ms: twice the expiry window
        await nc.publish("fed.heartbeat.blink", heartbeat("blink", interval_ms=100))
        await nc.flush()
        await eventually(lambda: has_node(nc, "blink"), 2)
        await asyncio.sleep(0.1)  # sleep-ok: (the heartbeat interval itself)
    await nc.publish("fed.heartbeat.blink", heartbeat("blink", interval_ms=100))
    await nc.flush()
    stopped = time.monotonic()
    await eventually(lambda: _lacks(nc, "blink"), 3, "blink expired")
    gone_after = time.monotonic() - stopped
    assert 0.28 <= gone_after <= 1.5, gone_after  # 3 x interval_ms, checked every 0.5 s


async def test_a_stalled_gateway_keeps_its_live_nodes(fed: Federation, nc: Client) -> None:
    """The gateway's event loop blocked for 4.5 heartbeat intervals (a busy 2-core box:
    the 3-gateway budget test saw 0.4-0.7 s): the heartbeats of that time wait unread, and
    that is no node's silence. Before, the sweeper woke first and dropped both live
    nodes; requests that came next got ``404 no_capacity`` ("No nodes available")."""
    gw = await fed.gateway(fast())
    for node_id in ("w0", "w1"):
        await fed.node(node_id, capacity=8)  # heartbeats every 0.2 s: expiry after 0.6 s
    await fed.seen("w0", "w1")
    removed: list[str] = []
    gw.catalog.add_listener(
        lambda event, node: removed.append(node.node_id) if event is CatalogEvent.REMOVED else None
    )
    client = FedClient(nc)
    # The fault, not a wait: the loop blocked (nodes, gateway and test share it, as in
    # the suite's in-process federations on a busy box).
    time.sleep(0.9)  # noqa: ASYNC251  # sleep-ok: the fault itself
    results = await asyncio.gather(
        *(client.infer("generate", f"right after the stall {i}") for i in range(8))
    )
    assert {r.served_by for r in results} <= {"w0", "w1"}
    assert removed == []
    assert gw.catalog.deaf_s >= 0.5  # the stall was seen, and not counted as silence
    # Silence the gateway hears out still drops a node: w1 stops heartbeating, no leave.
    heartbeats = fed.nodes["w1"]._heartbeat_task
    assert heartbeats is not None
    heartbeats.cancel()
    await eventually(lambda: gw.catalog.node("w1") is None, 5, "w1 expired")
    assert removed == ["w1"] and gw.catalog.node("w0") is not None


async def test_a_stalled_gateway_blames_no_attempt(fed: Federation, nc: Client) -> None:
    """The loop blocked 1.5 s right after a dispatch: longer than the first-chunk limit
    (1 s here), but the node's answer waits unread in the gateway's buffer, and that is no
    node's silence either. Before, the sweeper woke first and gave the attempt up as late
    (a retry, and a failure deferred against a node that had answered in time)."""
    gw = await fed.gateway(fast())
    for node_id in ("w0", "w1"):  # a first chunk after 0.3 s: in flight when the loop blocks
        await fed.node(node_id, SyntheticBackend(SyntheticOptions(ttft_ms=300)), capacity=8)
    await fed.seen("w0", "w1")
    client = FedClient(nc)
    call = asyncio.ensure_future(client.infer("generate", "a question the stall interrupts"))
    await eventually(
        lambda: any(f.current is not None for f in gw.engine.flights.values()), 5, "dispatched"
    )
    time.sleep(1.5)  # noqa: ASYNC251  # sleep-ok: the fault itself (the loop blocked)
    result = await call
    await eventually(lambda: not gw.engine.flights, 5, "the gateway saw the answer")
    assert (gw.retries, gw.failovers) == (0, 0), result  # before: 1 retry
    health = [gw.health.get_cached_health(n) for n in ("w0", "w1")]
    assert all(h is not None and h.consecutive_failures == 0 for h in health), health
    assert gw.catalog.deaf_s >= 1.0


async def test_leave_removes_at_once(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    for node_id in ("l1", "l2"):
        await nc.publish(f"fed.heartbeat.{node_id}", heartbeat(node_id, "inc-1"))
    await eventually(lambda: has_node(nc, "l1", "l2"), 5)
    t0 = time.monotonic()
    await nc.publish("fed.leave.l1", b"")  # empty body
    await nc.publish("fed.leave.l2", b"{}")  # or {}
    await eventually(lambda: _lacks(nc, "l1", "l2"), 2, "left")
    assert time.monotonic() - t0 < 0.5  # not the 3 x 60 s expiry


async def test_leave_of_another_incarnation_is_ignored(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await nc.publish("fed.heartbeat.l3", heartbeat("l3", "current"))
    await eventually(lambda: has_node(nc, "l3"), 5)
    # A late leave of the previous process must not remove the restarted one (extension).
    await nc.publish("fed.leave.l3", payload({"incarnation": "previous"}))
    await processed_leaves(nc, nc)
    assert await has_node(nc, "l3")
    await nc.publish("fed.leave.l3", payload({"incarnation": "current"}))
    await eventually(lambda: _lacks(nc, "l3"), 2)


async def test_foreign_worker_joins_and_serves(fed: Federation, nc: Client) -> None:
    """A worker written with nothing but NATS: heartbeat, inbox, JSON replies."""
    await fed.gateway(fast())
    worker = await fed.client()
    dispatches: list[Msg] = []

    async def on_dispatch(msg: Msg) -> None:
        dispatches.append(msg)
        d = json.loads(msg.data)
        text = d["request"].get("input", "").upper()
        if d["request"].get("stream"):
            for i, word in enumerate(text.split(), 1):
                await worker.publish(msg.reply, payload({"seq": i, "text": word, "tokens": 1}))
            done = {"Fed-Status": "ok", "Fed-Tokens": str(len(text.split()))}
            await worker.publish(msg.reply, b"", headers=done | {"Fed-Finish-Reason": "stop"})
            return
        result = {
            "request_id": d["request_id"],
            "model": "raw",
            "output": text,
            "served_by": "raw-1",
            "region": "lab",
            "tokens": len(text.split()),
            "latency_ms": 0.1,
            "attempt": d["attempt"],
        }
        await worker.publish(msg.reply, payload(result))

    await worker.subscribe("fed.node.raw-1.infer", cb=on_dispatch)
    await worker.flush()
    hb = heartbeat("raw-1", models=[{"model": "raw", "capabilities": ["generate"]}])
    await worker.publish("fed.heartbeat.raw-1", hb)
    await eventually(lambda: has_node(nc, "raw-1"), 5)

    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    body = {"input": "hello world", "request_id": "f-1", "params": {"k": 1}}
    msg = await ask(nc, "infer.generate", body, headers=trace)
    result = assert_ok_result(msg)
    assert (result["output"], result["served_by"], result["attempt"]) == ("HELLO WORLD", "raw-1", 1)
    dispatch = json.loads(dispatches[0].data)
    assert dispatch["request"] == body  # the service's body, forwarded untouched
    assert dispatch["attempt"] == 1 and dispatch["resume"] is None
    assert dispatch["capability"] == "generate" and dispatch["request_id"] == "f-1"
    assert 0 < dispatch["timeout_ms"] <= 5000
    assert (dispatches[0].headers or {}).get("traceparent") == trace["traceparent"]

    call = await StreamCall.open(nc, "infer.generate", {"input": "a b c", "stream": True})
    terminal = await call.finish()
    call.assert_contiguous()
    assert call.text == "ABC"
    hdrs = terminal.headers or {}
    assert (hdrs["Fed-Status"], hdrs["Fed-Served-By"], hdrs["Fed-Tokens"]) == ("ok", "raw-1", "3")


# -- the node's own subjects (as a gateway in another language would use them) ---------


async def test_node_inbox_ping_cancel_and_resume(fed: Federation, nc: Client) -> None:
    node = await fed.node("n1", slow(20), capacity=1, models={"m": ("generate",)})
    assert (await ask(nc, "fed.node.n1.ping")).data == b"{}"

    # Resume: the node continues after the text already relayed and numbers from seq 1.
    prefix = expected_text("m", "hi", 5, 4)
    dispatch = {
        "request": {"input": "hi", "stream": True, "params": {"max_tokens": 10, "seed": 5}},
        "attempt": 2,
        "resume": {"text": prefix, "tokens": 4},
        "capability": "generate",
        "request_id": "res-1",
    }
    call = await StreamCall.open(nc, "fed.node.n1.infer", dispatch)
    terminal = await call.finish()
    call.assert_contiguous()
    assert prefix + call.text == expected_text("m", "hi", 5, 10)
    hdrs = terminal.headers or {}
    assert (hdrs["Fed-Status"], hdrs["Fed-Served-By"], hdrs["Fed-Tokens"]) == ("ok", "n1", "10")

    # At capacity: 429 overloaded; cancel on fed.node.<id>.cancel stops the job.
    long = {"request": {"stream": True, "params": {"max_tokens": 500}}, "request_id": "long"}
    running = await StreamCall.open(nc, "fed.node.n1.infer", long)
    await running.until_chunks(1)
    assert_error(await ask(nc, "fed.node.n1.infer", {"request": {}}), 429, "overloaded")
    await nc.publish("fed.node.n1.cancel", payload({"request_id": "long"}))
    assert_error(await running.finish(), 499, "cancelled")
    await eventually(lambda: not node._jobs, 2)


# -- inspection ------------------------------------------------------------------------


async def test_gateway_nodes(fed: Federation, nc: Client) -> None:
    svc = await fed.gateway(fast(gateway_id="gw-a"))
    node = await fed.node(
        "n1", region="eu", capacity=3, models={"m": ("generate", "code")}, labels={"rack": "7"}
    )
    await fed.seen("n1")
    reply = json.loads((await ask(nc, "fed.gateway.nodes", b"")).data)
    assert reply["gateway"] == "gw-a" == svc.gateway_id
    (n1,) = reply["nodes"]
    assert n1["node_id"] == "n1" and n1["region"] == "eu"
    assert n1["models"] == [{"model": "m", "capabilities": ["code", "generate"]}]
    assert n1["health"] == "unknown" and n1["circuit"] == "closed"
    assert (n1["in_flight"], n1["capacity"]) == (0, 3)
    assert n1["incarnation"] == node.incarnation
    assert n1["labels"] == {"rack": "7"}
    assert 0 <= n1["heartbeat_age_ms"] < 1000
    for key in ("latency_p50_ms", "latency_p99_ms"):
        assert key in n1


async def test_every_gateway_answers_control_subjects(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast(gateway_id="gw-a"))
    await fed.gateway(fast(gateway_id="gw-b"))
    replies = await gather_replies(nc, "fed.gateway.stats", want=2)
    assert sorted(json.loads(r.data)["gateway"] for r in replies) == ["gw-a", "gw-b"]


async def test_gateway_stats(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await fed.node("n1", models={"m": ("generate",)})
    await fed.seen("n1")
    for _ in range(2):
        ok = {"input": "a b", "tenant_id": "acme", "params": {"max_tokens": 3}}
        assert_ok_result(await ask(nc, "infer.generate", ok))
    call = await StreamCall.open(
        nc, "infer.generate", {"stream": True, "tenant_id": "acme", "params": {"max_tokens": 4}}
    )
    await call.finish()
    assert_error(await ask(nc, "infer.nothing", {"tenant_id": "acme"}), 404, "no_capacity")
    stats = json.loads((await ask(nc, "fed.gateway.stats")).data)
    assert stats["total_requests"] == 4
    assert stats["successful_requests"] == 3
    assert stats["failed_requests"] == 1
    assert stats["total_tokens"] == 3 + 3 + 4
    assert stats["active_streams"] == 0
    for key in ("avg_latency_ms", "p50_latency_ms", "p99_latency_ms"):
        assert isinstance(stats[key], int) and stats[key] >= 0
    assert stats["per_tenant"]["acme"] == {
        "requests": 4,
        "successes": 3,
        "failures": 1,
        "tokens": 10,
    }
    assert stats["per_node"]["n1"]["successes"] == 3
    assert stats["per_node"]["n1"]["tokens"] == 10


async def test_gateway_stats_counts_dispatches_per_node(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await fed.node("n1", models={"m": ("generate",)})
    await fed.seen("n1")
    assert_ok_result(await ask(nc, "infer.generate", {"input": "x"}))
    stats = json.loads((await ask(nc, "fed.gateway.stats")).data)
    assert stats["per_node"]["n1"]["requests"] == 1


async def test_route_dry_run(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast(strategy="least_latency"))  # deterministic: the dry run predicts
    nodes = [await fed.node(n, region="eu", models={"m": ("generate",)}) for n in ("a", "b")]
    await fed.seen("a", "b")
    body = {"input": "hi", "qos": {"region": "eu"}}
    msg = await ask(nc, "fed.gateway.route.generate", body)
    view = json.loads(msg.data)
    assert view["chosen"] in {"a", "b"}
    assert sorted(c["node_id"] for c in view["candidates"]) == ["a", "b"]
    for c in view["candidates"]:
        assert c["eligible"] is True and c["reason"] == ""
        assert isinstance(c["score"], float)
        assert {"health", "latency", "locality", "cost"} <= c["scores"].keys()
        assert c["contributions"]  # per-policy part of the score
    assert view["candidates"][0]["node_id"] == view["chosen"]  # best first
    # Nothing was dispatched.
    assert all(n.served == 0 and not n._jobs for n in nodes)
    stats = json.loads((await ask(nc, "fed.gateway.stats")).data)
    assert stats["total_requests"] == 0
    # The dry run predicts the real route.
    real = assert_ok_result(await ask(nc, "infer.generate", body))
    assert real["served_by"] == view["chosen"]


async def test_route_dry_run_explains_rejections(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await fed.node("a", region="eu", models={"m": ("generate",)})
    await fed.seen("a")
    view = json.loads(
        (await ask(nc, "fed.gateway.route.generate", {"qos": {"privacy": "restricted"}})).data
    )
    assert view["chosen"] is None
    (a,) = view["candidates"]
    assert a["eligible"] is False and "privacy" in a["reason"]
    empty = json.loads((await ask(nc, "fed.gateway.route.sentiment", b"")).data)
    assert empty["chosen"] is None and empty["candidates"] == []
    assert_error(await ask(nc, "fed.gateway.route.generate", b"nope"), 400, "bad_request")


async def test_decisions_are_published(fed: Federation, nc: Client) -> None:
    svc = await fed.gateway(fast(gateway_id="gw-d"))
    await fed.node("n1", models={"m": ("generate",)})
    await fed.seen("n1")
    sub = await nc.subscribe("fed.decisions")
    await nc.flush()
    assert_ok_result(await ask(nc, "infer.generate", {"request_id": "dec-1", "model": "m"}))
    decision = json.loads((await sub.next_msg(timeout=2)).data)
    assert decision["request_id"] == "dec-1"
    assert (decision["capability"], decision["model"], decision["chosen"]) == (
        "generate",
        "m",
        "n1",
    )
    assert decision["attempt"] == 1
    assert isinstance(decision["score"], float) and decision["reason"]
    assert (decision["gateway"], decision["outcome"]) == (svc.gateway_id, "ok")


async def test_service_discovery(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    await fed.node("n1", models={"m": ("generate",)})
    for subject in ("$SRV.PING", "$SRV.INFO"):
        replies = [json.loads(r.data) for r in await gather_replies(nc, subject, want=2)]
        by_name = {r["name"]: r for r in replies}
        assert by_name.keys() == {"fedgate-gateway", "fedgate-worker"}, subject
        for r in replies:
            assert r["version"] and r["id"]
            if subject == "$SRV.INFO":
                assert isinstance(r["description"], str) and r["description"]
    info = {
        r["name"]: r
        for r in map(
            json.loads,
            [m.data for m in await gather_replies(nc, "$SRV.INFO.fedgate-worker", want=1)],
        )
    }
    assert info["fedgate-worker"]["metadata"]["node_id"] == "n1"
