"""Circuit breaker: the reference tests (fake clock instead of sleeps) plus probe slots."""

from __future__ import annotations

import pytest

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from gateway.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, **kw: float) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(**kw), clock=clock)  # type: ignore[arg-type]


def test_defaults() -> None:
    c = CircuitBreakerConfig()
    assert (c.failure_threshold, c.reset_timeout_s, c.half_open_successes) == (5, 30.0, 3)
    assert c.half_open_max_probes == 1


def test_opens_after_threshold(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=3)
    for _ in range(2):
        b.record_failure("n")
    assert b.state("n") is CircuitState.CLOSED
    b.record_failure("n")
    assert b.state("n") is CircuitState.OPEN and b.is_open("n")


def test_success_resets_failures(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=3)
    b.record_failure("n")
    b.record_failure("n")
    b.record_success("n")
    assert b.failures("n") == 0


def test_half_open_then_closed(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, half_open_successes=2, reset_timeout_s=0.01)
    b.record_failure("n")
    b.record_failure("n")
    assert b.is_open("n")
    clock.advance(0.02)
    assert not b.is_open("n")
    assert b.state("n") is CircuitState.HALF_OPEN
    b.record_success("n")
    b.record_success("n")
    assert b.state("n") is CircuitState.CLOSED


def test_failure_in_half_open_reopens(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, reset_timeout_s=0.01)
    b.record_failure("n")
    b.record_failure("n")
    clock.advance(0.02)
    assert not b.is_open("n")
    b.record_failure("n")
    assert b.state("n") is CircuitState.OPEN


def test_failure_while_open_stays_open_and_restarts_timer(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, reset_timeout_s=10)
    b.record_failure("n")
    b.record_failure("n")
    clock.advance(8)
    b.record_failure("n")
    assert b.state("n") is CircuitState.OPEN
    clock.advance(8)
    assert b.is_open("n")


def test_long_reset_still_open(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout_s=60)
    b.record_failure("n")
    clock.advance(1)
    assert b.is_open("n")


def test_half_open_needs_all_successes(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, half_open_successes=3, reset_timeout_s=1)
    b.record_failure("n")
    clock.advance(1)
    assert not b.is_open("n")
    b.record_success("n")
    b.record_success("n")
    assert b.state("n") is CircuitState.HALF_OPEN
    b.record_success("n")
    assert b.state("n") is CircuitState.CLOSED


def test_success_while_open_closes(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1)
    b.record_failure("n")
    b.record_success("n")
    assert b.state("n") is CircuitState.CLOSED and b.failures("n") == 0


def test_unknown_node_closed_without_entry(clock: FakeClock) -> None:
    b = breaker(clock)
    assert b.state("x") is CircuitState.CLOSED
    assert not b.is_open("x")
    assert b.try_acquire("x")
    assert b.all_states() == []


def test_all_states(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1)
    b.record_failure("n1")
    b.record_success("n2")
    assert dict(b.all_states()) == {"n1": CircuitState.OPEN, "n2": CircuitState.CLOSED}


# -- what fedgate adds ------------------------------------------------------------------


def test_state_agrees_with_is_open_without_writing(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout_s=5)
    b.record_failure("n")
    clock.advance(5)
    assert b.state("n") is CircuitState.HALF_OPEN
    assert b.admits("n")
    assert not b.is_open("n")
    assert b.state("n") is CircuitState.HALF_OPEN


def test_half_open_limits_probes(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout_s=5, half_open_max_probes=1)
    b.record_failure("n")
    assert not b.try_acquire("n")
    clock.advance(5)
    assert b.try_acquire("n")
    assert not b.try_acquire("n") and not b.admits("n")
    b.release("n")
    assert b.try_acquire("n")
    b.record_success("n")  # releases the slot
    assert b.try_acquire("n")
    b.record_failure("n")
    assert b.state("n") is CircuitState.OPEN and not b.try_acquire("n")
    b.forget("n")
    assert b.state("n") is CircuitState.CLOSED
