"""The wire contract under failure: retries, lost nodes, failover, a caller that leaves.

Which node a request tries first is made deterministic, not left to luck: the node that
must be tried first is cheaper (``cost`` 0) and joins first, and a dry run on
``fed.gateway.route.<cap>`` confirms the gateway's choice before the real request.
The mid-stream failover runs real ``fedgate worker`` processes and SIGKILLs one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from nats.aio.client import Client

from tests.helpers import Federation, Proc, eventually, federation, processes
from tests.integration.test_protocol import (
    StreamCall,
    ask,
    assert_ok_result,
    fast,
    nodes_view,
    payload,
    slow,
)
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text, token_at


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f


async def chosen(nc: Client, body: Any, capability: str = "generate") -> str | None:
    """The node a dry run picks for this request."""
    view = json.loads((await ask(nc, f"fed.gateway.route.{capability}", body)).data)
    return view["chosen"]


async def test_retry_lands_on_another_node(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    failing = SyntheticBackend(SyntheticOptions(fail_rate=1.0))
    bad = await fed.node("bad", failing, cost=0.0, models={"m": ("generate",)})
    await fed.seen("bad")
    good = await fed.node("good", cost=1.0, models={"m": ("generate",)})
    await fed.seen("good")
    body = {"input": "retry me", "params": {"max_tokens": 6, "seed": 1}}
    assert await chosen(nc, body) == "bad"
    msg = await ask(nc, "infer.generate", body)
    result = assert_ok_result(msg)
    assert (msg.headers or {})["Fed-Attempts"] == "2"
    assert result["served_by"] == "good" and result["attempt"] == 2
    assert result["output"] == expected_text("m", "retry me", 1, 6)
    assert (bad.served, good.served) == (0, 1)
    assert (await nodes_view(nc))["bad"]["health"] == "degraded"


async def test_retry_on_a_stream_before_the_first_chunk(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    failing = SyntheticBackend(SyntheticOptions(fail_rate=1.0))
    await fed.node("bad", failing, cost=0.0, models={"m": ("generate",)})
    await fed.seen("bad")
    await fed.node("good", cost=1.0, models={"m": ("generate",)})
    await fed.seen("good")
    body = {"input": "s", "stream": True, "params": {"max_tokens": 5}}
    assert await chosen(nc, body) == "bad"
    call = await StreamCall.open(nc, "infer.generate", body)
    terminal = await call.finish()
    call.assert_contiguous()
    assert call.text == expected_text("m", "s", None, 5)
    hdrs = terminal.headers or {}
    assert (hdrs["Fed-Status"], hdrs["Fed-Served-By"], hdrs["Fed-Attempts"]) == ("ok", "good", "2")


async def test_abandoned_attempt_is_cancelled_on_its_node(fed: Federation, nc: Client) -> None:
    """A first-chunk timeout sends the request elsewhere and frees the slow node's slot."""
    await fed.gateway(fast(first_chunk_timeout_s=0.3, request_timeout_s=10))
    hung = SyntheticBackend(SyntheticOptions(hang=True))
    slow_node = await fed.node("hung", hung, cost=0.0, models={"m": ("generate",)})
    await fed.seen("hung")
    await fed.node("ok", cost=1.0, models={"m": ("generate",)})
    await fed.seen("ok")
    assert await chosen(nc, {"input": "x"}) == "hung"
    msg = await ask(nc, "infer.generate", {"input": "x"})
    assert assert_ok_result(msg)["served_by"] == "ok"
    assert (msg.headers or {})["Fed-Attempts"] == "2"
    # Without a cancel the job would hold its slot until the 10 s deadline.
    await eventually(lambda: not slow_node._jobs, 2, "abandoned job cancelled on the node")


async def test_late_first_chunk_of_an_abandoned_attempt_is_not_relayed(
    fed: Federation, nc: Client
) -> None:
    """A node answering just after the first-chunk timeout must not corrupt the stream.

    The gateway gives up on "late" at 0.2 s and waits out its retry backoff (>= 1 s); the
    late node's chunks arrive in between (0.5 s). The caller must still see one stream
    equal to an uninterrupted run, not "late"'s chunks followed by a restart from token 0.
    """
    await fed.gateway(fast(first_chunk_timeout_s=0.2, retry_backoff_initial_s=1.0))
    late = await fed.client()
    body = {"input": "late", "stream": True, "params": {"max_tokens": 8, "seed": 2}}
    tasks: set[asyncio.Task[None]] = set()

    async def answer_late(reply: str) -> None:
        await asyncio.sleep(0.5)  # sleep-ok: (the fake node's own slowness)
        for i in range(3):
            chunk = {"seq": i + 1, "text": token_at("m", "late", 2, i), "tokens": 1}
            await late.publish(reply, payload(chunk))
        # ... and then it hangs.

    async def on_dispatch(msg: Any) -> None:
        task = asyncio.create_task(answer_late(msg.reply))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await late.subscribe("fed.node.late.infer", cb=on_dispatch)
    hb = {"incarnation": "l1", "models": [{"model": "m", "capabilities": ["generate"]}],
          "capacity": 4, "cost": 0.0, "interval_ms": 60_000}  # fmt: skip
    await late.publish("fed.heartbeat.late", payload(hb))
    await eventually(lambda: _has(nc, "late"), 5)
    await fed.node("ok", cost=1.0, models={"m": ("generate",)})
    await fed.seen("ok")
    assert await chosen(nc, body) == "late"
    call = await StreamCall.open(nc, "infer.generate", body)
    terminal = await call.finish(timeout=10)
    call.assert_contiguous()
    assert call.text == expected_text("m", "late", 2, 8)
    assert (terminal.headers or {}).get("Fed-Served-By") == "ok"


async def test_node_at_capacity_sends_the_request_elsewhere(fed: Federation, nc: Client) -> None:
    """A node answering 429 overloaded (full with another gateway's work) is not at fault."""
    await fed.gateway(fast())
    busy = await fed.client()

    async def refuse(msg: Any) -> None:
        await busy.publish(msg.reply, b"", headers={
            "Nats-Service-Error-Code": "429",
            "Nats-Service-Error": "busy is at capacity",
            "Fed-Error": "overloaded",
        })  # fmt: skip

    await busy.subscribe("fed.node.busy.infer", cb=refuse)
    hb = {"incarnation": "b1", "models": [{"model": "m", "capabilities": ["generate"]}],
          "capacity": 4, "cost": 0.0, "interval_ms": 60_000}  # fmt: skip
    await busy.publish("fed.heartbeat.busy", payload(hb))
    await eventually(lambda: _has(nc, "busy"), 5)
    await fed.node("free", cost=1.0, models={"m": ("generate",)})
    await fed.seen("free")
    assert await chosen(nc, {"input": "x"}) == "busy"
    msg = await ask(nc, "infer.generate", {"input": "x"})
    assert assert_ok_result(msg)["served_by"] == "free"
    assert (msg.headers or {})["Fed-Attempts"] == "2"
    busy_view = (await nodes_view(nc))["busy"]
    assert (busy_view["health"], busy_view["failures"]) == ("unknown", 0)


async def test_node_full_with_other_work_queues_instead_of_429(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast(max_queue=10))
    await fed.node("n1", slow(20), capacity=1, models={"m": ("generate",)})
    await fed.seen("n1")
    # Another gateway (here: a raw dispatch) holds the node's only slot for ~0.3 s.
    other = {"request": {"stream": True, "params": {"max_tokens": 15}}, "request_id": "other"}
    elsewhere = await StreamCall.open(nc, "fed.node.n1.infer", other)
    await elsewhere.until_chunks(1)
    msg = await ask(nc, "infer.generate", {"input": "x", "timeout_ms": 3000}, timeout=4)
    assert assert_ok_result(msg)["served_by"] == "n1"
    await elsewhere.finish()


async def test_no_responders_on_dispatch_is_an_instant_failure(fed: Federation, nc: Client) -> None:
    # First-chunk timeout far above what the test allows: only no-responders can explain
    # a quick answer from the other node.
    await fed.gateway(fast(first_chunk_timeout_s=10))
    ghost = {
        "node_id": "ghost",
        "incarnation": "g1",
        "models": [{"model": "m", "capabilities": ["generate"]}],
        "capacity": 8,
        "cost": 0.0,
        "interval_ms": 60_000,
    }
    await nc.publish("fed.heartbeat.ghost", payload(ghost))  # nobody serves its inbox
    await eventually(lambda: _has(nc, "ghost"), 5)
    await fed.node("real", cost=1.0, models={"m": ("generate",)})
    await fed.seen("real")
    assert await chosen(nc, {"input": "x"}) == "ghost"
    t0 = time.monotonic()
    msg = await ask(nc, "infer.generate", {"input": "x"})
    elapsed = time.monotonic() - t0
    result = assert_ok_result(msg)
    assert result["served_by"] == "real"
    assert (msg.headers or {})["Fed-Attempts"] == "2"
    assert elapsed < 1.0, elapsed


async def test_caller_going_away_cancels_the_job(fed: Federation, nc: Client) -> None:
    svc = await fed.gateway(fast())
    node = await fed.node("n1", slow(20), models={"m": ("generate",)})
    await fed.seen("n1")
    call = await StreamCall.open(
        nc, "infer.generate", {"stream": True, "params": {"max_tokens": 500}}
    )
    await call.until_chunks(2)
    assert node._jobs
    await call.sub.unsubscribe()  # the caller is gone: its inbox has no subscriber
    await eventually(lambda: not node._jobs, 3, "the node's job was cancelled")
    assert node.served == 0
    await eventually(lambda: svc.in_flight == 0, 2)
    stats = json.loads((await ask(nc, "fed.gateway.stats")).data)
    assert stats["active_streams"] == 0


async def test_mid_stream_failover_with_real_workers(fed: Federation, nc: Client) -> None:
    url = fed.url
    await fed.gateway(fast(first_chunk_timeout_s=3, stall_timeout_s=0.5))
    with processes() as procs:
        workers: dict[str, Proc] = {}
        for node_id in ("w1", "w2"):
            workers[node_id] = Proc(
                "worker", "--nats", url, "--node-id", node_id, "--model", "m",
                "--capability", "generate", "--token-interval-ms", "30",
                "--heartbeat-interval", "0.2",
            )  # fmt: skip
            procs.append(workers[node_id])
        await fed.seen("w1", "w2", timeout=20)
        body = {"input": "fail over", "stream": True, "params": {"max_tokens": 40, "seed": 9}}
        call = await StreamCall.open(nc, "infer.generate", body)
        await call.until_chunks(4)
        serving = [n for n, v in (await nodes_view(nc)).items() if v["in_flight"] > 0]
        assert len(serving) == 1, serving
        (victim,) = serving
        workers[victim].kill()  # SIGKILL: no leave, no error message, nothing
        terminal = await call.finish(timeout=10)
        survivor = "w2" if victim == "w1" else "w1"
        call.assert_contiguous()
        assert len(call.chunks) == 40
        assert call.text == expected_text("m", "fail over", 9, 40)
        hdrs = terminal.headers or {}
        assert hdrs.get("Fed-Status") == "ok", hdrs
        assert hdrs["Fed-Served-By"] == survivor
        assert hdrs["Fed-Attempts"] == "2"
        assert hdrs["Fed-Tokens"] == "40"


async def test_a_silent_request_moves_when_its_node_dies_after_the_first_ping(
    fed: Federation, nc: Client
) -> None:
    """A non-streaming request is silent until its answer: the gateway keeps pinging its
    node (every 4 x liveness_probe_s), so a node SIGKILLed after the first ping is found
    gone by a ping, long before its heartbeats are missed (3 x 2 s here); before, only
    the heartbeat expiry moved the request."""
    url = fed.url
    gw = await fed.gateway(fast(first_chunk_timeout_s=30, request_timeout_s=30))
    with processes() as procs:
        workers: dict[str, Proc] = {}
        for node_id in ("w1", "w2"):
            workers[node_id] = Proc(
                "worker", "--nats", url, "--node-id", node_id, "--model", "m",
                "--capability", "generate", "--token-interval-ms", "20",
                "--heartbeat-interval", "2",
            )  # fmt: skip
            procs.append(workers[node_id])
        await fed.seen("w1", "w2", timeout=20)
        pongs = await nc.subscribe(f"{gw.engine.inbox}.*.p1")  # a copy of each ping's answer
        body = {"input": "silent", "params": {"max_tokens": 60, "seed": 3}}
        answer = asyncio.ensure_future(ask(nc, "infer.generate", body, timeout=30))
        await eventually(lambda: len(gw.engine.flights) == 1, what="the request is in flight")
        (flight,) = gw.engine.flights.values()
        victim = flight.node_id
        pong = await pongs.next_msg(timeout=10)  # its node answered the first ping
        assert not (pong.headers or {}).get("Status")  # (not "no responders")
        workers[victim].kill()  # SIGKILL: no leave, no error, its heartbeats just stop
        survivor = "w2" if victim == "w1" else "w1"
        await eventually(lambda: flight.node_id == survivor, timeout=10, what="moved")
        assert gw.catalog.node(victim) is not None  # found by a ping, not by expiry
        msg = await answer
        assert_ok_result(msg)
        hdrs = msg.headers or {}
        assert (hdrs["Fed-Served-By"], hdrs["Fed-Attempts"]) == (survivor, "2")
        assert json.loads(msg.data)["output"] == expected_text("m", "silent", 3, 60)


async def _has(nc: Client, node_id: str) -> bool:
    return node_id in await nodes_view(nc)
