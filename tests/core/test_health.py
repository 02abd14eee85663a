"""Health checker: the reference health_tests plus real percentiles and probing."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from gateway.health import HealthChecker, HealthConfig, HealthState, percentile
from shared.errors import NodeUnreachable


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def checker(clock: FakeClock, **kw: float) -> HealthChecker:
    return HealthChecker(HealthConfig(**kw), clock=clock)  # type: ignore[arg-type]


def status(hc: HealthChecker, node: str) -> HealthState:
    h = hc.get_cached_health(node)
    assert h is not None
    return h.status


def test_defaults() -> None:
    c = HealthConfig()
    assert (c.check_interval_s, c.probe_timeout_s, c.failure_threshold) == (10.0, 5.0, 3)
    assert (c.recovery_threshold, c.degraded_latency_s) == (2, 1.0)


def test_unknown_then_healthy(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    assert status(hc, "n") is HealthState.UNKNOWN
    hc.report_success("n", 0.05)
    assert status(hc, "n") is HealthState.UNKNOWN  # one success keeps Unknown
    hc.report_success("n", 0.05)
    hc.report_success("n", 0.05)
    assert status(hc, "n") is HealthState.HEALTHY


def test_slow_success_degrades(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_success("n", 2.0)
    assert status(hc, "n") is HealthState.DEGRADED


def test_failures_unhealthy(clock: FakeClock) -> None:
    hc = checker(clock, failure_threshold=3)
    hc.register_node("n")
    for _ in range(3):
        hc.report_failure("n")
    assert status(hc, "n") is HealthState.UNHEALTHY


def test_failure_then_recovery(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_failure("n")
    assert status(hc, "n") is HealthState.DEGRADED
    hc.report_success("n", 0.01)
    hc.report_success("n", 0.01)
    assert status(hc, "n") is HealthState.HEALTHY


def test_threshold_five(clock: FakeClock) -> None:
    hc = checker(clock, failure_threshold=5)
    hc.register_node("n")
    for _ in range(3):
        hc.report_failure("n")
    assert status(hc, "n") is HealthState.DEGRADED
    hc.report_failure("n")
    hc.report_failure("n")
    assert status(hc, "n") is HealthState.UNHEALTHY


def test_latency_positive(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    for _ in range(10):
        hc.report_success("n", 0.1)
    h = hc.get_cached_health("n")
    assert h is not None and h.latency_p50_ms > 0


def test_unknown_node_reports_are_noops(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.report_success("ghost", 0.01)
    hc.report_failure("ghost")
    hc.report_probe_success("ghost")
    assert hc.total_count() == 0


def test_register_deregister_counts(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("a")
    hc.register_node("b")
    assert hc.total_count() == 2 and len(hc.all_statuses()) == 2
    hc.deregister_node("a")
    hc.deregister_node("unknown")
    assert hc.total_count() == 1 and len(hc.all_statuses()) == 1


def test_healthy_count(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("a")
    hc.register_node("b")
    hc.report_success("a", 0.01)
    hc.report_success("a", 0.01)
    assert hc.healthy_count() == 1


def test_check_node(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    assert hc.check_node("n").status is HealthState.UNKNOWN
    with pytest.raises(NodeUnreachable, match="ghost"):
        hc.check_node("ghost")


def test_monitoring_flag(clock: FakeClock) -> None:
    hc = checker(clock)
    assert not hc.is_monitoring()
    hc.start_monitoring()
    assert hc.is_monitoring()
    hc.stop_monitoring()
    assert not hc.is_monitoring()


def test_reregister_resets(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_failure("n")
    hc.register_node("n")
    assert status(hc, "n") is HealthState.UNKNOWN


# -- real percentiles, throughput, probes ----------------------------------------------


def test_real_percentiles_over_window(clock: FakeClock) -> None:
    hc = checker(clock, window=100)
    hc.register_node("n")
    for ms in range(1, 101):
        hc.report_success("n", ms / 1000)
    h = hc.get_cached_health("n")
    assert h is not None
    assert (h.latency_p50_ms, h.latency_p90_ms, h.latency_p99_ms) == pytest.approx((50, 90, 99))
    for _ in range(100):  # the window slides: old samples leave
        hc.report_success("n", 0.5)
    h = hc.get_cached_health("n")
    assert h is not None and h.latency_p50_ms == pytest.approx(500) and h.samples == 100


def test_percentile_helper() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0


def test_tokens_per_s_measured(clock: FakeClock) -> None:
    hc = checker(clock, window=2)
    hc.register_node("n")
    hc.report_success("n", 0.5)
    assert hc.get_cached_health("n").tokens_per_s is None  # type: ignore[union-attr]
    hc.report_success("n", 1.0, tokens=100)
    hc.report_success("n", 1.0, tokens=300)
    hc.report_success("n", 1.0, tokens=500)
    assert hc.get_cached_health("n").tokens_per_s == pytest.approx(400)  # type: ignore[union-attr]


def test_probe_recovers_unhealthy(clock: FakeClock) -> None:
    hc = checker(clock, check_interval_s=10)
    hc.register_node("n")
    hc.register_node("ok")
    hc.report_success("ok", 0.01)
    hc.report_success("ok", 0.01)
    for _ in range(3):
        hc.report_failure("n")
    assert hc.needs_probe() == ["n"]
    assert hc.needs_probe() == []  # at most once per interval
    clock.advance(10)
    assert hc.needs_probe() == ["n"]
    hc.report_probe_success("n")
    h = hc.get_cached_health("n")
    assert h is not None and h.status is HealthState.UNKNOWN and h.consecutive_failures == 0
    hc.report_success("n", 0.01)
    hc.report_success("n", 0.01)
    assert status(hc, "n") is HealthState.HEALTHY
    hc.report_probe_failure("n")
    assert status(hc, "n") is HealthState.DEGRADED


def test_listener_and_last_check(clock: FakeClock) -> None:
    hc = checker(clock)
    seen: list[str] = []
    hc.add_listener(seen.append)
    hc.register_node("n")
    clock.advance(5)
    hc.report_success("n", 0.01)
    assert seen == ["n", "n"]
    assert hc.get_cached_health("n").last_check == clock()  # type: ignore[union-attr]
