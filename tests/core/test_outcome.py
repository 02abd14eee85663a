"""Blame and the retry budget as pure functions (gateway/outcome.py), with a fake clock.

The simulations below drive the same functions the service calls after each failed
attempt, against scripted nodes, and count dispatches and blame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig
from gateway.health import HealthChecker, HealthState
from gateway.outcome import Blame, BlameLedger, busy_wait, judge_node_error

MAX_RETRIES = 3


def test_the_caller_is_blamed_for_its_own_request() -> None:
    for kind, code in (("bad_request", 400), ("policy_violation", 403)):
        verdict = judge_node_error(kind, code, remaining_s=10)
        assert verdict.blame is Blame.NONE and not verdict.retry_elsewhere


def test_busy_draining_and_unserved_are_nobodys_fault() -> None:
    for kind, code in (
        ("overloaded", 429),
        ("node_draining", 503),
        ("no_capacity", 404),
        ("duplicate", 409),
        ("cancelled", 499),
    ):
        verdict = judge_node_error(kind, code, remaining_s=10)
        assert verdict.blame is Blame.NONE and verdict.retry_elsewhere, kind
    assert judge_node_error("overloaded", 429, 10).busy


def test_misconfigured_node_is_blamed_at_once() -> None:
    verdict = judge_node_error("node_unavailable", 503, remaining_s=10)
    assert verdict.blame is Blame.NOW and verdict.retry_elsewhere


def test_engine_failures_wait_for_the_requests_end() -> None:
    for kind, code in (("upstream_error", 502), ("internal", 500), ("timeout", 504)):
        assert judge_node_error(kind, code, remaining_s=10).blame is Blame.DEFERRED
    assert judge_node_error("something_new", 500, 10).blame is Blame.DEFERRED
    assert judge_node_error("something_new", 400, 10).retry_elsewhere is False


def test_a_node_timeout_at_the_callers_deadline_blames_nobody() -> None:
    assert judge_node_error("timeout", 504, remaining_s=0.1).blame is Blame.NONE


@dataclass
class Fleet:
    """Scripted nodes and the core's health and breakers under a fake clock."""

    answers: dict[str, str]
    """node -> the Fed-Error kind it answers ("" = success)."""
    now: float = 0.0
    dispatches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.health = HealthChecker(clock=lambda: self.now)
        self.breaker = CircuitBreaker(CircuitBreakerConfig(), clock=lambda: self.now)
        for node in self.answers:
            self.health.register_node(node)

    def run(self, order: list[str], poison_after: int = 2) -> str:
        """One request, tried on ``order``'s nodes; returns its outcome."""
        ledger = BlameLedger(poison_after)
        for node in order:
            self.dispatches.append(node)
            kind = self.answers[node]
            if not kind:
                self.health.report_success(node, 0.05)
                self.breaker.record_success(node)
                outcome = "ok"
                break
            codes = {"upstream_error": 502, "node_unavailable": 503, "bad_request": 400}
            verdict = judge_node_error(kind, codes.get(kind, 500), remaining_s=10)
            if verdict.blame is Blame.NOW:
                self.health.report_failure(node)
                self.breaker.record_failure(node)
            if ledger.record(node, verdict.blame):
                return "poison"
            if not verdict.retry_elsewhere:
                return kind
            if len(self.dispatches) > MAX_RETRIES:
                outcome = kind
                break
        else:
            outcome = "exhausted"
        for node in ledger.settle(served=True):
            self.health.report_failure(node)
            self.breaker.record_failure(node)
        return outcome

    def failures(self, node: str) -> int:
        snap = self.health.get_cached_health(node)
        assert snap is not None
        return snap.consecutive_failures


def test_404_on_one_node_is_retried_elsewhere_and_penalises_only_it() -> None:
    fleet = Fleet({"bad": "node_unavailable", "good": ""})
    for _ in range(10):
        fleet.dispatches.clear()
        assert fleet.run(["bad", "good"]) == "ok"
    assert fleet.failures("bad") >= 3
    assert fleet.health.get_cached_health("bad").status is HealthState.UNHEALTHY  # type: ignore[union-attr]
    assert fleet.failures("good") == 0


def test_a_poison_request_penalises_no_node() -> None:
    fleet = Fleet({"n1": "upstream_error", "n2": "upstream_error", "n3": "upstream_error"})
    for _ in range(20):
        fleet.dispatches.clear()
        assert fleet.run(["n1", "n2", "n3"]) == "poison"
        assert fleet.dispatches == ["n1", "n2"]  # stopped after poison_after nodes
    for node in ("n1", "n2", "n3"):
        assert fleet.failures(node) == 0
        assert fleet.breaker.failures(node) == 0


def test_an_engine_failure_followed_by_a_success_elsewhere_blames_that_node() -> None:
    fleet = Fleet({"flaky": "upstream_error", "good": ""})
    assert fleet.run(["flaky", "good"]) == "ok"
    assert fleet.failures("flaky") == 1
    assert fleet.failures("good") == 0


def test_a_429_storm_is_bounded_to_max_retries_plus_one_dispatches() -> None:
    """Two nodes that always answer 429: the service's busy loop with a fake clock."""
    now, deadline = 0.0, 30.0
    dispatches = 0
    busy_answers = 0
    cooldown = {"n1": 0.0, "n2": 0.0}
    answered_at = None
    while answered_at is None:
        # dispatch to every node not inside its Retry-After, each answers 429
        for node, until in cooldown.items():
            if until <= now and dispatches <= MAX_RETRIES:
                dispatches += 1
                busy_answers += 1
                cooldown[node] = now + 0.05
        wait = busy_wait(now, deadline, dispatches, MAX_RETRIES, busy_answers,
                         min(cooldown.values()), 0.1, 0.5)  # fmt: skip
        if wait is None:
            answered_at = now
        else:
            now += wait
    assert dispatches == MAX_RETRIES + 1
    assert answered_at < 2.0  # 429 long before the 30 s deadline


def test_busy_wait_answers_now_when_retry_after_passes_the_deadline() -> None:
    assert busy_wait(0.0, 2.0, 1, 3, 1, ready_at=10.0, backoff_s=0.1, backoff_max_s=0.5) is None
    wait = busy_wait(0.0, 2.0, 1, 3, 1, ready_at=0.3, backoff_s=0.1, backoff_max_s=0.5)
    assert wait == 0.3


@given(
    st.lists(
        st.sampled_from(["upstream_error", "node_unavailable", "overloaded", "ok"]), max_size=12
    ),
    st.integers(min_value=1, max_value=4),
)
def test_poison_forgives_and_otherwise_every_deferred_failure_counts(
    kinds: list[str], poison_after: int
) -> None:
    ledger = BlameLedger(poison_after)
    poisoned = False
    deferred: list[str] = []
    for i, kind in enumerate(kinds):
        if kind == "ok":
            break
        code = {"upstream_error": 502, "node_unavailable": 503, "overloaded": 429}[kind]
        verdict = judge_node_error(kind, code, remaining_s=10)
        if verdict.blame is Blame.DEFERRED:
            deferred.append(f"n{i}")
        if ledger.record(f"n{i}", verdict.blame):
            poisoned = True
            break
    settled = ledger.settle(served=True)
    if poisoned:
        assert settled == []
    else:
        assert settled == deferred  # every engine failure of a non-poison request counts
