"""Health checker: the reference health_tests plus real percentiles and probing."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from gateway.health import HealthChecker, HealthConfig, HealthState, NodeHealth, percentile
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


# -- issue 12: per-unit-of-work judging, aging, canaries ---------------------------------


def snap(hc: HealthChecker, node: str) -> NodeHealth:
    h = hc.get_cached_health(node)
    assert h is not None
    return h


def test_new_defaults() -> None:
    c = HealthConfig()
    assert (c.degraded_ttft_s, c.degraded_tpot_s, c.slow_factor, c.slow_min_samples) == (
        10.0,
        0.5,
        8.0,
        8,
    )
    assert (c.sample_max_age_s, c.idle_probe_s, c.latency_limit_s) == (120.0, 15.0, 5.0)
    assert c.max_idle_probes == 16


def test_long_generation_with_normal_token_time_is_not_slow(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    for _ in range(3):
        hc.report_success("n", 6.0, tokens=300)  # non-streaming: 20 ms per token
    h = snap(hc, "n")
    assert h.status is HealthState.HEALTHY
    assert h.tpot_p50_ms == pytest.approx(20.0) and h.tpot_samples == 3
    assert h.samples == 0 and h.latency_p50_ms == 0.0  # no first-token figure from it
    assert h.tokens_per_s == pytest.approx(50.0)


def test_stream_judged_on_ttft_and_time_per_token(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_success("n", 3.2, 100, ttft_s=0.2)  # a 3 s cold first turn, 30 ms/token
    hc.report_success("n", 2.0, 90, ttft_s=0.2)
    h = snap(hc, "n")
    assert h.status is HealthState.HEALTHY
    assert h.latency_p50_ms == pytest.approx(200.0) and h.samples == 2
    assert h.tpot_p50_ms == pytest.approx(20.0)
    hc.report_success("n", 12.0, 10, ttft_s=11.0)  # a first token after 11 s is slow
    assert status(hc, "n") is HealthState.DEGRADED


def test_whole_request_rule_kept_without_ttft_or_tokens(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_success("n", 1.5)  # an RPC (e.g. an embedding) slower than 1 s
    assert status(hc, "n") is HealthState.DEGRADED
    assert snap(hc, "n").latency_p50_ms == pytest.approx(1500.0)


def test_slow_tokens_absolute_and_relative(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("abs")
    hc.report_success("abs", 60.0, 100, ttft_s=0.1)  # ~600 ms per token
    assert status(hc, "abs") is HealthState.DEGRADED
    hc.register_node("rel")
    for _ in range(8):
        hc.report_success("rel", 1.1, 100, ttft_s=0.1)  # 10 ms per token
    hc.report_success("rel", 5.1, 100, ttft_s=0.1)  # 50 ms: 5x its median, fine
    assert status(hc, "rel") is HealthState.HEALTHY
    hc.report_success("rel", 10.1, 100, ttft_s=0.1)  # 100 ms: 10x its own median
    assert status(hc, "rel") is HealthState.DEGRADED
    hc.report_success("rel", 1.1, 100, ttft_s=0.1)
    hc.report_success("rel", 1.1, 100, ttft_s=0.1)
    assert status(hc, "rel") is HealthState.HEALTHY


def test_a_hiccup_on_a_fast_node_is_not_slow(clock: FakeClock) -> None:
    """8 x the median of a node answering 30 tokens in half a millisecond is a scheduler
    hiccup (a few ms), not a slow node; 8 x and a quarter second late in all is."""
    hc = checker(clock)
    hc.register_node("fast")
    for _ in range(8):
        hc.report_success("fast", 0.0005, 30)  # ~0.017 ms per token
    hc.report_success("fast", 0.02, 30)  # 40 x its median, 20 ms late in all
    assert status(hc, "fast") is HealthState.HEALTHY
    hc.report_success("fast", 0.3, 30)  # 10 ms per token: 600 x, 0.3 s late in all
    assert status(hc, "fast") is HealthState.DEGRADED


def test_a_node_serving_only_whole_answers_is_canaried_at_once(clock: FakeClock) -> None:
    """Non-streaming answers carry no first-token time: a node serving only them has no
    latency figure, so it is due a canary at once, not after ``idle_probe_s``; its
    snapshot says it is unmeasured until the canary's TTFT comes."""
    hc = checker(clock)
    hc.register_node("n")
    assert snap(hc, "n").measured is False
    assert hc.needs_probe() == []  # new, no outcome yet: exploration's job
    hc.report_success("n", 1.0, 50)
    hc.report_success("n", 1.0, 50)
    h = snap(hc, "n")
    assert h.status is HealthState.HEALTHY and h.measured is False and h.samples == 0
    clock.advance(1)
    assert hc.needs_probe() == ["n"]  # 1 s after it joined, not 15 s
    hc.report_probe_success("n", latency_s=0.03)
    h = snap(hc, "n")
    assert h.measured and h.samples == 1 and h.latency_p50_ms == pytest.approx(30.0)
    clock.advance(1)
    assert hc.needs_probe() == []


def test_windows_age_out_but_keep_the_newest(clock: FakeClock) -> None:
    hc = checker(clock, sample_max_age_s=60)
    hc.register_node("n")
    for _ in range(5):
        hc.report_success("n", 0.9)  # whole requests, 900 ms
    clock.advance(30)
    hc.report_success("n", 0.1)
    assert snap(hc, "n").latency_p50_ms == pytest.approx(900.0)
    clock.advance(31)  # the 900 ms samples are now 61 s old
    hc.needs_probe()  # the periodic sweep ages every node
    h = snap(hc, "n")
    assert (h.samples, h.latency_p50_ms) == (1, pytest.approx(100.0))
    clock.advance(600)
    hc.needs_probe()
    assert snap(hc, "n").samples == 1  # the newest stays, however old


def test_needs_probe_names_unknown_idle_degraded_and_over_limit(clock: FakeClock) -> None:
    hc = checker(clock, check_interval_s=10, idle_probe_s=60)
    for n in ("new", "busy", "slow", "deg"):
        hc.register_node(n)
    for _ in range(2):
        hc.report_success("busy", 0.05)
        hc.report_success("slow", 6.0)  # whole requests over the 5 s limit
    hc.report_success("deg", 0.05)
    hc.report_failure("deg")
    # over the latency limit; "new" is left to exploration's real traffic at first
    assert hc.needs_probe() == ["slow"]
    assert hc.needs_probe() == []  # at most once per check interval
    clock.advance(10)
    assert hc.needs_probe() == ["new", "slow", "deg"]  # no outcome for 10 s
    hc.report_success("busy", 0.05)
    clock.advance(59)
    hc.report_success("busy", 0.05)
    clock.advance(1)
    assert "busy" not in hc.needs_probe()  # measured a second ago
    clock.advance(60)
    assert "busy" in hc.needs_probe()  # idle for a minute


def test_probe_success_puts_an_excluded_node_back(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    for _ in range(3):
        hc.report_success("n", 6.0)
    assert snap(hc, "n").latency_p50_ms > 5000
    hc.report_probe_success("n", latency_s=0.05)
    h = snap(hc, "n")
    assert (h.samples, h.latency_p50_ms) == (1, pytest.approx(50.0))
    hc.register_node("m")
    hc.report_success("m", 0.05)
    hc.report_success("m", 0.07)
    hc.report_probe_success("m", latency_s=0.06)  # in service: one more sample
    assert snap(hc, "m").samples == 3


def test_probes_prove_a_degraded_node_healthy(clock: FakeClock) -> None:
    hc = checker(clock)
    hc.register_node("n")
    hc.report_failure("n")
    assert status(hc, "n") is HealthState.DEGRADED
    hc.report_probe_success("n", latency_s=0.05)
    hc.report_probe_success("n", latency_s=0.05)
    assert status(hc, "n") is HealthState.HEALTHY
    hc.report_probe_success("n", latency_s=30.0)  # answers, but 30 s for one token
    assert status(hc, "n") is HealthState.DEGRADED


def test_an_idle_probe_replaces_figures_from_another_moment(clock: FakeClock) -> None:
    # A node whose few samples came from a cold start (slow), then no traffic: the
    # near-best band leaves it out, so traffic alone never re-measures it.
    hc = checker(clock, check_interval_s=10, idle_probe_s=15)
    hc.register_node("n")
    for _ in range(3):
        hc.report_success("n", 0.05, ttft_s=0.4, tokens=10)
    assert snap(hc, "n").latency_p50_ms == pytest.approx(400.0)
    clock.advance(15)
    assert hc.needs_probe() == ["n"]
    hc.report_probe_success("n", latency_s=0.08)
    h = snap(hc, "n")
    assert (h.samples, h.latency_p50_ms) == (1, pytest.approx(80.0))  # replaced, not added
    hc.report_success("n", 0.05, ttft_s=0.09, tokens=10)
    hc.report_probe_success("n", latency_s=0.5)  # measured just now: a probe only adds
    assert snap(hc, "n").samples == 3


def test_idle_probes_are_bounded_per_call_longest_idle_first(clock: FakeClock) -> None:
    hc = checker(clock, check_interval_s=10, idle_probe_s=15, max_idle_probes=2)
    for n in ("a", "b", "c"):
        hc.register_node(n)
        for _ in range(2):  # HEALTHY: due only for being idle
            hc.report_success(n, 0.05, ttft_s=0.05, tokens=10)
        clock.advance(1)
    clock.advance(20)
    assert hc.needs_probe() == ["a", "b"]  # the two idle longest
    assert hc.needs_probe() == ["c"]  # the rest on the next call
