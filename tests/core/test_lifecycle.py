"""The request lifecycle as pure decisions (gateway/core/), with a fake clock and no NATS.

Each test builds a ``Flight``, moves it with its own transitions as the engine would,
and asks the lifecycle what comes next. ``drive`` at the end runs whole requests
against scripted nodes with the engine's loop in miniature: what it proves (one retry
budget, exactly one answer) holds for the engine, which runs the same decisions.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import FakeClock
from gateway.core.cooldown import DEFAULT_BUSY_S, Cooldowns, busy_seconds
from gateway.core.flight import Flight, Phase
from gateway.core.lifecycle import Lifecycle, Limits
from gateway.core.steps import (
    ENQUEUE,
    STAY,
    Failover,
    Failure,
    Finish,
    Retry,
    Timer,
    WaitBusy,
)
from gateway.core.table import FlightTable
from gateway.core.verdicts import (
    answered,
    answered_tokens,
    final_error,
    read_node_error,
    refusal,
)
from gateway.outcome import Blame
from shared import errors
from shared import messages as m

NOW = 1000.0
NODES = ("n1", "n2", "n3", "n4", "n5")


def flight(stream: bool = False, capability: str = "generate", timeout_s: float = 30.0) -> Flight:
    request = m.InferRequest(input="hi", stream=stream, capability=capability)
    return FlightTable("_INBOX.t", "job").open(request, b"{}", "r1", "reply", NOW, timeout_s)


def lifecycle(max_retries: int = 3, **kw: float) -> Lifecycle:
    # No backoff: a retry is due at once (the delay itself is tenacity's, tested there).
    limits = Limits(max_retries=max_retries, backoff_initial_s=0, backoff_max_s=0, **kw)
    return Lifecycle(limits)


def dispatch(f: Flight, node_id: str, now: float = NOW) -> None:
    f.start_attempt(node_id, 0.5, now, epoch=0)


def fail(
    lc: Lifecycle,
    f: Flight,
    failure: Failure,
    now: float = NOW,
    cooldowns: Cooldowns | None = None,
) -> object:
    f.end_attempt()
    return lc.after_failure(f, failure, now, cooldowns or Cooldowns(), fair=True)


GONE = Failure(errors.NodeUnreachable("n"), Blame.NOW)
ENGINE_5XX = Failure(errors.UpstreamError("engine 500"), Blame.DEFERRED, 502, "upstream_error")
BUSY = Failure(errors.Overloaded("busy"), Blame.NONE, 429, "overloaded", node_reported=True)


# -- the flight's phases -----------------------------------------------------------------


def test_a_flight_moves_through_its_phases() -> None:
    table = FlightTable("_INBOX.t", "job")
    f = table.open(m.InferRequest(capability="generate"), b"{}", "r1", "reply", NOW, 5.0)
    assert (f.phase, f.key, f.job_id, f.inbox, f.deadline) == (
        Phase.NEW, "1", "job1", "_INBOX.t.1.", NOW + 5.0,
    )  # fmt: skip
    assert table.by_ident[("", "r1")] is f
    table.enqueue(f, NOW)
    assert f.phase is Phase.QUEUED and list(table.waiting) == [f]
    assert table.waiting.popleft() is f  # the queue drains oldest first
    attempt = f.start_attempt("n1", 0.7, NOW + 1, epoch=3)
    assert (f.phase, f.attempts, f.tried, f.node_id, attempt.tag) == (
        Phase.ATTEMPT, 1, ["n1"], "n1", "1",
    )  # fmt: skip
    assert f.end_attempt() is attempt
    assert f.end_attempt() is None  # released once only
    assert f.phase is Phase.BETWEEN and f.node_id == "n1"  # the last node tried stays
    table.enqueue(f, NOW + 2)
    table.close(f)
    assert f.done and not table.flights and not table.by_ident and not table.waiting


def test_cooldowns_leave_busy_nodes_alone_until_their_retry_after() -> None:
    c = Cooldowns()
    assert not c
    c.hold("n1", NOW + 2)
    c.hold("n2", NOW - 1)
    assert c.exclude(["n3"], NOW) == {"n1", "n3"}
    assert "n2" not in c  # expired entries are pruned
    assert c.cooling(["n1", "n3"], NOW) == ["n1"]
    assert (busy_seconds("2.5"), busy_seconds(""), busy_seconds("soon")) == (
        2.5, DEFAULT_BUSY_S, DEFAULT_BUSY_S,
    )  # fmt: skip


# -- after a failed attempt ----------------------------------------------------------------


def test_a_failure_before_any_chunk_is_retried_within_the_budget() -> None:
    lc, f = lifecycle(max_retries=2), flight()
    for node in ("n1", "n2"):
        dispatch(f, node)
        assert fail(lc, f, GONE) == Retry(0.0)
    dispatch(f, "n3")
    step = fail(lc, f, GONE)
    assert isinstance(step, Finish) and isinstance(step.error, errors.AllNodesUnhealthy)


def test_a_timeout_with_no_retry_left_is_a_504() -> None:
    lc, f = lifecycle(max_retries=0), flight()
    dispatch(f, "n1")
    step = fail(lc, f, Failure(errors.Timeout(detail="no answer"), Blame.NOW))
    assert isinstance(step, Finish) and step.error.code == 504


def test_the_same_engine_failure_on_two_nodes_is_poison() -> None:
    lc, f = lifecycle(), flight()
    dispatch(f, "n1")
    assert fail(lc, f, ENGINE_5XX) == Retry(0.0)
    assert f.blame.pending == ["n1"]
    dispatch(f, "n2")
    step = fail(lc, f, ENGINE_5XX)
    assert isinstance(step, Finish) and step.error.kind == "upstream_error"
    assert f.blame.pending == []  # nobody is penalised for a poison request


def test_a_failure_the_gateway_could_not_judge_keeps_the_node_out_of_the_ledger() -> None:
    lc, f = lifecycle(), flight()
    dispatch(f, "n1")
    f.end_attempt()
    assert lc.after_failure(f, ENGINE_5XX, NOW, Cooldowns(), fair=False) == Retry(0.0)
    assert f.blame.pending == []


def test_a_stream_with_chunks_fails_over_with_resume() -> None:
    lc, f = lifecycle(), flight(stream=True)
    dispatch(f, "n1")
    f.chunk_log += [m.encode(m.Chunk(seq=1, text="ab ", tokens=1)),
                    m.encode(m.Chunk(seq=2, text="cd", tokens=2))]  # fmt: skip
    f.seq = 2
    step = fail(lc, f, GONE)
    assert step == Failover(m.Resume(text="ab cd", tokens=3)) and f.failovers == 1


def test_a_stream_that_cannot_resume_is_interrupted() -> None:
    lc = lifecycle()
    embed = flight(stream=True, capability="transcribe")
    dispatch(embed, "n1")
    embed.seq = 1
    step = fail(lc, embed, GONE)
    assert isinstance(step, Finish) and step.error.kind == "interrupted"
    tools = flight(stream=True)
    dispatch(tools, "n1")
    tools.chunk_log.append(m.encode(m.Chunk(seq=1, text="", tool_calls=[{"index": 0}])))
    tools.seq = 1
    step = fail(lc, tools, GONE)
    assert isinstance(step, Finish) and "tool calls" in step.error.message


def test_a_stream_past_its_deadline_ends_with_a_504() -> None:
    lc, f = lifecycle(), flight(stream=True, timeout_s=1.0)
    dispatch(f, "n1")
    f.seq = 1
    step = fail(lc, f, GONE, now=NOW + 2)
    assert isinstance(step, Finish) and step.error.code == 504


# -- when no node can take the next attempt -----------------------------------------------


def test_full_nodes_queue_the_request_then_keep_its_place() -> None:
    lc, f, full = lifecycle(), flight(), errors.Overloaded("every node at capacity")
    assert lc.after_routing_error(f, full, NOW, Cooldowns(), lambda: ["n1"], 0, False) is ENQUEUE
    f.enqueue(NOW)
    assert lc.after_routing_error(f, full, NOW, Cooldowns(), lambda: ["n1"], 1, False) is STAY
    other = flight()
    step = lc.after_routing_error(other, full, NOW, Cooldowns(), lambda: ["n1"], 1000, False)
    assert step == Finish(full) and full.retry_after_s == 1.0  # the queue is full
    step = lc.after_routing_error(other, full, NOW, Cooldowns(), lambda: ["n1"], 0, True)
    assert step == Finish(full)  # a failover does not wait in the queue


def test_nodes_that_exist_but_cannot_serve_are_a_503() -> None:
    lc, f, none = lifecycle(), flight(), errors.NoCapacity("generate")
    step = lc.after_routing_error(f, none, NOW, Cooldowns(), lambda: ["n1"], 0, False)
    assert isinstance(step, Finish) and step.error.code == 503
    step = lc.after_routing_error(f, none, NOW, Cooldowns(), lambda: [], 0, False)
    assert step == Finish(none)


def test_busy_nodes_are_waited_for_then_answered_429_with_retry_after() -> None:
    lc, f, cooldowns = lifecycle(max_retries=2), flight(), Cooldowns()
    none = errors.NoCapacity("generate")
    dispatch(f, "n1")
    cooldowns.hold("n1", NOW + 0.3)  # its Retry-After
    assert fail(lc, f, BUSY, cooldowns=cooldowns) == Retry(0.0)
    step = lc.after_routing_error(f, none, NOW, cooldowns, lambda: ["n1"], 0, False)
    assert isinstance(step, WaitBusy) and step.delay_s == pytest.approx(0.3)
    assert f.tried == []  # n1 may be tried again after the wait
    dispatch(f, "n1", NOW + 0.3)
    cooldowns.hold("n1", NOW + 0.6)
    assert fail(lc, f, BUSY, NOW + 0.3, cooldowns) == Retry(0.0)
    step = lc.after_routing_error(f, none, NOW + 0.3, cooldowns, lambda: ["n1"], 0, False)
    assert isinstance(step, WaitBusy)
    dispatch(f, "n1", NOW + 0.6)
    cooldowns.hold("n1", NOW + 0.9)
    step = fail(lc, f, BUSY, NOW + 0.6, cooldowns)  # the third dispatch spent the budget
    assert isinstance(step, Finish) and isinstance(step.error, errors.Overloaded)
    assert step.error.retry_after_s == pytest.approx(0.3)


def test_nodes_inside_a_retry_after_are_busy_not_gone() -> None:
    lc, cooldowns, none = lifecycle(), Cooldowns(), errors.NoCapacity("generate")
    cooldowns.hold("n2", NOW + 5)
    f = flight(timeout_s=60)
    dispatch(f, "n1")
    assert fail(lc, f, GONE) == Retry(0.0)
    step = lc.after_routing_error(f, none, NOW, cooldowns, lambda: ["n1", "n2"], 0, False)
    assert step == WaitBusy(5.0)  # n1 was tried; n2 is busy, not gone: wait for it
    short = flight(timeout_s=2)
    step = lc.after_routing_error(short, none, NOW, cooldowns, lambda: ["n2"], 0, False)
    assert isinstance(step, Finish) and step.error.code == 429  # the wait would pass it
    assert step.error.retry_after_s == 5.0  # type: ignore[attr-defined]


# -- timers ------------------------------------------------------------------------------------


def test_timers_fire_in_their_order() -> None:
    lc = lifecycle(first_chunk_timeout_s=10, stall_timeout_s=2, liveness_probe_s=0.25)
    f = flight(stream=True, timeout_s=30)
    assert lc.due(f, NOW) is Timer.NONE  # not dispatched: only the deadline can fire
    dispatch(f, "n1")
    assert lc.due(f, NOW + 0.1) is Timer.NONE
    assert lc.due(f, NOW + 0.3) is Timer.PING  # silent before its first chunk
    f.current.pinged = NOW + 0.3  # type: ignore[union-attr]
    assert lc.due(f, NOW + 1.2) is Timer.NONE  # the node answered; still silent:
    assert lc.due(f, NOW + 1.3) is Timer.PING  # pinged again every 4 x liveness_probe_s
    f.current.pinged = NOW + 9.3  # type: ignore[union-attr]
    assert lc.due(f, NOW + 10) is Timer.FIRST_CHUNK
    f.current.first_chunk_at = f.current.last_activity = NOW + 1  # type: ignore[union-attr]
    assert lc.due(f, NOW + 3) is Timer.STALL
    assert lc.due(f, NOW + 30) is Timer.DEADLINE
    assert lc.timeout_failure(f, Timer.STALL).blame is Blame.NOW
    # Late to the first chunk but answering pings: slow, judged when the request ends.
    assert lc.timeout_failure(f, Timer.FIRST_CHUNK).blame is Blame.DEFERRED
    f.enqueue(NOW)
    assert lc.due(f, NOW + 29) is Timer.NONE and lc.due(f, NOW + 30) is Timer.DEADLINE
    f.finish()
    assert lc.due(f, NOW + 100) is Timer.NONE


# -- reading a node's answer ------------------------------------------------------------------


def test_a_nodes_errors_are_judged() -> None:
    busy = {"Fed-Error": "overloaded", "Nats-Service-Error-Code": "429", "Retry-After": "2"}
    verdict, failure, busy_s = read_node_error(busy, remaining_s=10)
    assert verdict.busy and busy_s == 2.0 and failure.node_reported
    bad = {"Fed-Error": "bad_request", "Nats-Service-Error-Code": "400"}
    verdict, failure, _ = read_node_error(bad, remaining_s=10)
    assert not verdict.retry_elsewhere and failure.error.code == 400
    late = {"Fed-Error": "timeout", "Nats-Service-Error-Code": "504"}
    assert read_node_error(late, remaining_s=0.1)[1].blame is Blame.NONE


def test_the_tokens_reported_are_what_the_caller_received() -> None:
    f = flight()
    assert answered_tokens(f, {"Fed-Tokens": "7"}, b"") == 7
    assert answered_tokens(f, {}, b'{"tokens": 4, "output": "x"}') == 4
    assert answered_tokens(f, {}, b"not json") == 0
    s = flight(stream=True)
    s.chunk_log = [m.encode(m.Chunk(seq=1, text="a", tokens=2))]
    s.failovers = 1
    assert answered_tokens(s, {"Fed-Tokens": "9"}, b"") == 2


def test_a_results_decode_phase_is_read_from_the_node_s_timing() -> None:
    """A result with ``ttft_ms`` gives its decode phase (latency less TTFT, seconds);
    none without it, with an impossible one, or for a stream (timed by the gateway)."""
    f = flight()
    ok = b'{"tokens": 20, "latency_ms": 250.0, "ttft_ms": 50.0, "output": "x"}'
    assert answered(f, {}, ok) == (20, pytest.approx(0.2))
    assert answered(f, {}, b'{"tokens": 20, "latency_ms": 250.0}') == (20, None)
    assert answered(f, {}, b'{"tokens": 3, "latency_ms": 10.0, "ttft_ms": 11.0}') == (3, None)
    assert answered(f, {}, b'{"tokens": 3, "latency_ms": 10.0, "ttft_ms": -1}') == (3, None)
    assert answered(flight(stream=True), {"Fed-Tokens": "9"}, b"") == (9, None)


def test_refused_before_acceptance_and_final_errors() -> None:
    embed = m.InferRequest(stream=True, capability="embed")
    assert isinstance(refusal(embed), errors.BadRequest)
    assert refusal(m.InferRequest(capability="generate")) is None
    f = flight()
    routing = errors.NoCapacity("generate")
    assert final_error(f, routing, NOW) is routing  # never dispatched
    dispatch(f, "n1")
    f.last_error = (503, "node_draining", "draining")
    assert final_error(f, routing, NOW).code == 503
    f.last_error = (429, "overloaded", "busy")
    assert final_error(f, routing, NOW).code == 429
    assert final_error(f, routing, f.deadline).code == 504


# -- whole requests against scripted nodes ------------------------------------------------------

OUTCOMES = {
    "gone": GONE,
    "5xx": ENGINE_5XX,
    "busy": BUSY,
    "draining": Failure(errors.NodeDraining("bye"), Blame.NONE, 503, "node_draining", True),
}


def drive(lc: Lifecycle, answers: list[str], clock: FakeClock) -> tuple[int, object]:
    """One request through the engine's loop in miniature; each dispatch gets the next
    scripted answer ("ok" or a failure). Returns the dispatches made and the outcome."""
    f, cooldowns = flight(timeout_s=60), Cooldowns()
    script = iter(answers)
    step: object = Retry(0.0)
    while True:
        if isinstance(step, Finish):
            return f.attempts, step.error
        if isinstance(step, WaitBusy):
            clock.advance(step.delay_s)
        left = [n for n in NODES if n not in cooldowns.exclude(f.tried, clock())]
        if not left:
            step = lc.after_routing_error(
                f, errors.NoCapacity("generate"), clock(), cooldowns, lambda: NODES, 0, False
            )
            continue
        dispatch(f, left[0], clock())
        answer = next(script, "ok")
        if answer == "ok":
            return f.attempts, "ok"
        if answer == "busy":
            cooldowns.hold(left[0], clock() + 0.2)
        step = fail(lc, f, OUTCOMES[answer], clock(), cooldowns)


@given(st.lists(st.sampled_from([*sorted(OUTCOMES), "ok"]), max_size=12))
def test_one_retry_budget_and_exactly_one_outcome(answers: list[str]) -> None:
    clock = FakeClock(NOW)
    dispatches, outcome = drive(lifecycle(max_retries=3), answers, clock)
    assert 1 <= dispatches <= 4  # max_retries + 1, whatever the nodes answer
    if outcome == "ok":
        assert "ok" in answers[:dispatches] or len(answers) < dispatches
    else:
        assert isinstance(outcome, errors.FedError)
        assert clock() < NOW + 60  # answered before the deadline, never at it


def test_the_first_chunk_limit_follows_the_nodes_own_record() -> None:
    lc = lifecycle(first_chunk_timeout_s=10)

    def of(request: m.InferRequest) -> Flight:
        return FlightTable("_INBOX.t", "job").open(request, b"{}", "r1", "reply", NOW, 30.0)

    stream = of(m.InferRequest(input="hi", stream=True))
    whole = of(m.InferRequest(input="hi", params={"max_tokens": 100}))
    fast = m.EngineSignals(ttft_p90_ms=200, itl_p90_ms=20)
    slow = m.EngineSignals(ttft_p90_ms=6_000, itl_p90_ms=150)
    assert lc.first_chunk_limit(stream, None, NOW) == 10  # no record: the configured limit
    assert lc.first_chunk_limit(stream, m.EngineSignals(), NOW) == 10
    assert lc.first_chunk_limit(stream, fast, NOW) == 10  # never below the configured limit
    assert lc.first_chunk_limit(stream, slow, NOW) == pytest.approx(18.0)  # 3 × TTFT p90
    assert lc.first_chunk_limit(whole, slow, NOW) == pytest.approx(3 * (6 + 100 * 0.15))
    no_budget = of(m.InferRequest(input="hi", params={"max_tokens": "lots"}))
    assert lc.first_chunk_limit(no_budget, slow, NOW) == pytest.approx(18.0)
    # One node was late already: the next one has until the deadline.
    dispatch(stream, "n1")
    lc.after_failure(
        stream, lc.timeout_failure(stream, Timer.FIRST_CHUNK), NOW + 10, Cooldowns(), True
    )
    assert stream.late == 1
    assert lc.first_chunk_limit(stream, None, NOW + 10) == pytest.approx(20.0)
    f = flight(stream=True)
    dispatch(f, "n1")
    f.current.first_chunk_s = 18.0  # type: ignore[union-attr]
    f.current.pinged = NOW + 16.5  # type: ignore[union-attr]
    assert lc.due(f, NOW + 17) is Timer.NONE and lc.due(f, NOW + 18) is Timer.FIRST_CHUNK
