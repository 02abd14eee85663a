"""The engine end to end on a fake NATS connection and a fake clock: every message the
gateway publishes is read back, every node answer and timer is driven by the test.

The same behaviours run over a real nats-server in tests/integration and tests/faults;
here each path is taken deterministically and fast.
"""

from __future__ import annotations

import json
import time

from shared import messages as m
from tests.gateway.conftest import Gateway, chunk, result
from tests.helpers import eventually

OK = {"Fed-Status": "ok"}
GONE = {"Status": "503"}
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def body(msg_data: bytes) -> dict[str, object]:
    return json.loads(msg_data)  # type: ignore[no-any-return]


async def test_a_request_is_dispatched_and_its_result_relayed_untouched(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "request_id": "r-1"}, headers={"traceparent": TRACE})
    (dispatch,) = gw.dispatches()
    sent = body(dispatch.data)
    assert dispatch.subject == "fed.node.n1.infer"
    assert sent["request"] == {"input": "hi", "request_id": "r-1"}  # the caller's body as sent
    assert (sent["attempt"], sent["resume"], sent["capability"], sent["request_id"]) == (
        1, None, "generate", "r-1",
    )  # fmt: skip
    assert sent["timeout_ms"] == 30_000 and sent["job_id"]
    assert dispatch.headers is not None  # the caller's trace goes on (a span of its own if on)
    assert dispatch.headers["traceparent"].split("-")[1] == TRACE.split("-")[1]
    answer = result(dispatch, "n1")
    await gw.answer(dispatch, answer, **{"Fed-Tokens": "3"})
    (reply,) = gw.to_caller()
    assert reply.data == answer  # forwarded byte for byte
    assert reply.headers is not None
    assert reply.headers["Fed-Served-By"] == "n1" and reply.headers["Fed-Attempts"] == "1"
    assert reply.headers["Fed-Request-Id"] == "r-1" and reply.headers["traceparent"] == TRACE
    assert gw.svc.in_flight == 0 and gw.svc.stats.snapshot().successful_requests == 1


async def test_no_responders_on_dispatch_retries_on_another_node(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi"})
    first = gw.dispatches()[0]
    await gw.answer(first, **GONE)  # nobody listens on n1's inbox
    second = gw.dispatches("n2")[0]
    assert body(second.data)["attempt"] == 2
    await gw.answer(second, result(second, "n2"))
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Attempts"] == "2"
    assert gw.svc.retries == 1
    assert gw.nc.sent("fed.node.n1.cancel")  # a gone node is told to stop anyway


async def test_a_stream_fails_over_mid_stream_with_resume_and_one_sequence(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True})
    first = gw.dispatches()[0]
    await gw.answer(first, chunk(1, "alpha "))
    await gw.answer(first, chunk(2, "bravo ", tokens=2))
    await gw.answer(first, **GONE)
    second = gw.dispatches("n2")[0]
    assert body(second.data)["resume"] == {"text": "alpha bravo ", "tokens": 3}
    await gw.answer(second, chunk(1, "charlie"))  # the node numbers from 1 again
    await gw.answer(second, **OK, **{"Fed-Tokens": "4"})
    relayed = gw.to_caller()
    assert [m.chunk_decoder.decode(x.data).seq for x in relayed[:-1]] == [1, 2, 3]
    terminal = relayed[-1]
    assert terminal.data == b"" and terminal.headers is not None
    assert terminal.headers["Fed-Status"] == "ok" and terminal.headers["Fed-Served-By"] == "n2"
    assert terminal.headers["Fed-Tokens"] == "4"  # what the caller received: 1 + 2 + 1
    assert gw.svc.failovers == 1


async def test_a_gap_in_a_nodes_numbering_resumes_without_the_gap(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True})
    first = gw.dispatches()[0]
    await gw.answer(first, chunk(1, "one "))
    await gw.answer(first, chunk(3, "three"))  # chunk 2 was lost in transit
    second = gw.dispatches("n2")[0]
    assert body(second.data)["resume"] == {"text": "one ", "tokens": 1}
    assert len(gw.to_caller()) == 1  # the chunk after the gap never reached the caller
    assert gw.svc.breaker.failures("n1") == 0  # a message lost in transit is nobody's fault


async def test_the_deadline_answers_504_and_stops_the_node(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi", "timeout_ms": 500})
    await gw.tick(0.3)
    assert gw.nc.sent("fed.node.n1.ping")  # silent for the liveness interval (0.25 s)
    await gw.tick(0.3)
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "504"
    assert gw.nc.sent("fed.node.n1.cancel")


async def test_no_first_chunk_in_time_moves_to_another_node(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi"})
    await gw.tick(10.0)
    assert [d.subject for d in gw.dispatches()] == ["fed.node.n1.infer", "fed.node.n2.infer"]
    cancel = body(gw.nc.sent("fed.node.n1.cancel")[0].data)
    assert cancel["job_id"] == body(gw.dispatches()[0].data)["job_id"]


async def test_a_liveness_ping_nobody_answers_fails_over_at_once(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True})
    await gw.answer(gw.dispatches()[0], chunk(1, "a"))
    await gw.tick(0.3)
    (ping,) = gw.nc.sent("fed.node.n1.ping")
    await gw.nc.deliver(ping.reply, headers=GONE)
    assert body(gw.dispatches("n2")[0].data)["resume"] == {"text": "a", "tokens": 1}


async def test_a_caller_gone_mid_stream_stops_the_node_and_answers_nobody(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi", "stream": True})
    await gw.answer(gw.dispatches()[0], chunk(1, "a"))
    (relayed,) = gw.to_caller()
    await gw.nc.deliver(relayed.reply, headers=GONE)  # the caller's inbox is gone
    assert gw.nc.sent("fed.node.n1.cancel") and gw.svc.in_flight == 0
    assert len(gw.to_caller()) == 1
    assert gw.svc.stats.snapshot().failed_requests == 1


async def test_a_cancel_names_a_request_within_its_tenant(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi", "request_id": "r-1", "tenant_id": "acme"})
    await gw.nc.deliver("fed.cancel.r-1", b"")  # no tenant: not this request
    assert gw.svc.in_flight == 1
    await gw.nc.deliver("fed.cancel.r-1", b'{"tenant_id":"acme"}')
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Error"] == "cancelled"
    assert body(gw.nc.sent("fed.node.n1.cancel")[0].data)["request_id"] == "r-1"


async def test_identity_resend_takes_over_anything_else_is_a_409(gw: Gateway) -> None:
    await gw.node("n1")
    request = {"input": "hi", "request_id": "r-1", "stream": True}
    await gw.ask(request, token="1", headers={"Fed-Ack": "1"})
    await gw.answer(gw.dispatches()[0], chunk(1, "a"))
    await gw.ask({**request, "input": "other"}, token="2", headers={"Fed-Ack": "1"})
    assert gw.to_caller("2")[0].headers["Fed-Error"] == "duplicate"  # type: ignore[index]
    await gw.ask(request, token="3")  # the same bytes without Fed-Ack: another caller
    assert gw.to_caller("3")[0].headers["Fed-Error"] == "duplicate"  # type: ignore[index]
    await gw.ask(request, token="4", headers={"Fed-Ack": "1"})  # its own resend
    ack, replayed = gw.to_caller("4")
    assert ack.headers is not None and ack.headers["Fed-Gateway"] == "gw-test"
    assert m.chunk_decoder.decode(replayed.data).seq == 1
    moved = gw.to_caller("1")[-1]  # the subject that lost the request is told so
    assert moved.headers is not None and moved.headers["Fed-Error"] == "duplicate"
    await gw.answer(gw.dispatches()[0], **OK)
    assert gw.to_caller("4")[-1].headers["Fed-Status"] == "ok"  # type: ignore[index]
    assert len(gw.dispatches()) == 1  # the prompt ran once


async def test_full_nodes_queue_requests_oldest_first(gw: Gateway) -> None:
    await gw.node("n1", capacity=1)
    await gw.ask({"input": "first"}, token="1")
    await gw.ask({"input": "second"}, token="2")
    assert gw.svc.queued == 1 and len(gw.dispatches()) == 1
    first = gw.dispatches()[0]
    await gw.answer(first, result(first, "n1"))  # the slot frees: the queue drains
    await eventually(lambda: len(gw.dispatches()) == 2, 5, "the queued request dispatched")
    assert gw.svc.queued == 0
    assert body(gw.dispatches()[1].data)["request"] == {"input": "second"}


async def test_a_queued_request_sent_to_a_busy_wait_comes_back_to_the_queue(
    gw: Gateway,
) -> None:
    """The drain takes a queued request while the node is inside a Retry-After: it waits
    for the node in a timer, then finds the node full again: it queues again (it used to
    stay QUEUED outside the queue and wait for its deadline: a 504 after 30 s)."""
    await gw.node("n1", capacity=2)
    for token in ("1", "2", "3"):
        await gw.ask({"input": f"r{token}"}, token=token)
    assert gw.svc.queued == 1 and len(gw.dispatches()) == 2
    busy = {"Fed-Error": "overloaded", "Nats-Service-Error-Code": "429", "Retry-After": "0.05"}
    await gw.answer(gw.dispatches()[1], **busy)  # full with another gateway's work
    await eventually(lambda: gw.svc.queued == 0, 5, "r3 taken from the queue to wait")
    gw.clock.advance(1.0)  # the Retry-After is over
    await gw.ask({"input": "r4"}, token="4")  # takes the free slot: n1 is full again
    assert len(gw.dispatches()) == 3
    await eventually(lambda: gw.svc.queued == 2, 5, "r2 and r3 back in the queue")
    for n in (4, 5):
        first = gw.dispatches()[0 if n == 4 else 2]
        await gw.answer(first, result(first, "n1"))
        await eventually(lambda n=n: len(gw.dispatches()) == n, 5, f"dispatch {n}")  # type: ignore[misc]
    assert {body(d.data)["request"]["input"] for d in gw.dispatches()[3:]} == {"r2", "r3"}


async def test_a_busy_node_is_waited_for_then_429_with_retry_after(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi", "timeout_ms": 1000})
    busy = {"Fed-Error": "overloaded", "Nats-Service-Error-Code": "429", "Retry-After": "5"}
    await gw.answer(gw.dispatches()[0], **busy)
    (reply,) = gw.to_caller()  # at once: waiting 5 s would pass the 1 s deadline
    assert reply.headers is not None and reply.headers["Fed-Error"] == "overloaded"
    assert reply.headers["Retry-After"] == "5"
    assert gw.svc.breaker.failures("n1") == 0  # busy is not a fault


async def test_a_callers_bad_request_is_answered_at_once(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi"})
    bad = {"Fed-Error": "bad_request", "Nats-Service-Error-Code": "400", "Nats-Service-Error": "x"}
    await gw.answer(gw.dispatches()[0], **bad)
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Error"] == "bad_request"
    assert len(gw.dispatches()) == 1


async def test_refusals_before_acceptance_keep_the_trace(gw: Gateway) -> None:
    await gw.ask(
        {"input": "hi", "stream": True}, capability="embed", headers={"traceparent": TRACE}
    )
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Error"] == "bad_request"
    assert reply.headers["traceparent"] == TRACE
    await gw.nc.deliver("infer.generate", b"[1]", reply="_INBOX.caller.2")
    assert gw.to_caller("2")[0].headers["Fed-Error"] == "bad_request"  # type: ignore[index]
    assert gw.svc.in_flight == 0 and gw.svc.stats.snapshot().total_requests == 0


async def test_no_node_for_a_model_names_the_model(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi", "model": "nope"})
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Error"] == "no_capacity"
    assert "'nope'" in reply.headers["Nats-Service-Error"]


async def test_a_lost_node_moves_its_work(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi"})
    await gw.nc.deliver("fed.leave.n1", b"")
    assert [d.subject for d in gw.dispatches()] == ["fed.node.n1.infer", "fed.node.n2.infer"]


async def test_stop_answers_what_is_left_interrupted(gw: Gateway) -> None:
    await gw.node("n1")
    await gw.ask({"input": "hi"})
    await gw.svc.stop(grace_s=0)
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Fed-Error"] == "interrupted"
    await gw.svc.stop()  # idempotent


async def test_a_first_chunk_late_on_every_node_blames_none_of_them(gw: Gateway) -> None:
    # A cold or overloaded fleet: the prompt's prefill outlasts the limit everywhere. The
    # nodes answer their pings (slow, not gone): after one late node the next one has
    # until the deadline (not cut at 10 s again), nobody is blamed for the 504, and the
    # next request is routed, not refused 503 all_unhealthy.
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True}, token="1")
    await gw.tick(10.0)
    await gw.tick(10.0)
    assert [d.subject for d in gw.dispatches()] == ["fed.node.n1.infer", "fed.node.n2.infer"]
    assert not gw.to_caller()  # n2 is still given its time
    await gw.tick(10.0)
    (reply,) = gw.to_caller()
    assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "504"
    for node in ("n1", "n2"):
        assert gw.svc.breaker.failures(node) == 0
        health = gw.svc.health.get_cached_health(node)
        assert health is None or health.consecutive_failures == 0
    await gw.ask({"input": "again", "stream": True}, token="2")
    assert len(gw.dispatches()) == 3  # routed again: nobody was made unhealthy


async def test_a_late_first_chunk_counts_against_the_node_when_another_answers(
    gw: Gateway,
) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi"})
    await gw.tick(10.0)
    second = gw.dispatches("n2")[0]
    await gw.answer(second, result(second, "n2"))
    assert gw.svc.breaker.failures("n1") == 1 and gw.svc.breaker.failures("n2") == 0


async def test_a_node_with_a_slow_record_gets_a_longer_first_chunk_limit(gw: Gateway) -> None:
    now_ms = int(time.time() * 1000)
    slow = m.EngineSignals(ttft_p90_ms=5_000, itl_p90_ms=100, measured_at=now_ms)
    await gw.node("n1", cost=0.1, engine=slow)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True}, token="1")  # limit 3 × 5 s = 15 s
    await gw.tick(14.0)
    assert len(gw.dispatches()) == 1
    await gw.tick(1.5)
    assert [d.subject for d in gw.dispatches()][-1] == "fed.node.n2.infer"


async def test_a_whole_answer_is_given_the_time_its_tokens_take(gw: Gateway) -> None:
    now_ms = int(time.time() * 1000)
    record = m.EngineSignals(ttft_p90_ms=1_000, itl_p90_ms=100, measured_at=now_ms)
    await gw.node("n1", cost=0.1, engine=record)
    await gw.node("n2", cost=0.9)
    # Not streamed: 3 × (1 s + 200 tokens × 0.1 s) = 63 s before the answer is overdue.
    await gw.ask({"input": "hi", "params": {"max_tokens": 200}, "timeout_ms": 120_000})
    await gw.tick(60.0)
    assert len(gw.dispatches()) == 1
    await gw.tick(3.5)
    assert len(gw.dispatches()) == 2


async def test_the_node_after_a_late_one_is_given_until_the_deadline(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.node("n2", cost=0.9)
    await gw.ask({"input": "hi", "stream": True})
    await gw.tick(10.0)  # n1 late: abandoned
    await gw.tick(15.0)  # n2 slow too, but a second late node is not abandoned
    second = gw.dispatches("n2")[0]
    await gw.answer(second, chunk(1, "finally"))
    await gw.answer(second, **OK, **{"Fed-Tokens": "1"})
    relayed = gw.to_caller()
    assert relayed[-1].headers is not None and relayed[-1].headers["Fed-Status"] == "ok"
    assert len(gw.dispatches()) == 2
    assert gw.svc.breaker.failures("n1") == 1  # n1 was slower than a node that answered
