"""Gateway stats: reference initial/after-failure numbers, percentiles, bounded tenants."""

from __future__ import annotations

from gateway.clock import FakeClock
from gateway.stats import OTHER, GatewayStats


def test_initial_stats() -> None:
    s = GatewayStats(clock=FakeClock()).snapshot()
    assert (s.total_requests, s.successful_requests, s.failed_requests) == (0, 0, 0)
    assert (s.total_tokens, s.active_streams, s.avg_latency_ms) == (0, 0, 0)
    assert (s.p50_latency_ms, s.p99_latency_ms) == (0, 0)


def test_after_failure() -> None:
    st = GatewayStats()
    st.record_request()
    st.record_failure()
    s = st.snapshot()
    assert (s.total_requests, s.failed_requests, s.successful_requests) == (1, 1, 0)


def test_success_accounting_and_integer_average() -> None:
    st = GatewayStats()
    for ms in (10, 20, 25):
        st.record_request(tenant_id="acme")
        st.record_success(ms / 1000, tokens=10, node_id="n1", tenant_id="acme")
    st.record_dispatch("n1")
    st.record_failure(node_id="n2", tenant_id="acme")
    s = st.snapshot()
    assert s.successful_requests == 3 and s.total_tokens == 30
    assert s.avg_latency_ms == 18  # (10 + 20 + 25) // 3
    assert s.p50_latency_ms == 20 and s.p99_latency_ms == 25
    assert s.per_node["n1"] == {"requests": 1, "successes": 3, "failures": 0, "tokens": 30}
    assert s.per_node["n2"]["failures"] == 1
    assert s.per_tenant["acme"] == {"requests": 3, "successes": 3, "failures": 1, "tokens": 30}


def test_streams_never_negative() -> None:
    st = GatewayStats()
    st.stream_started()
    st.stream_started()
    st.stream_ended()
    assert st.snapshot().active_streams == 1
    st.stream_ended()
    st.stream_ended()
    assert st.snapshot().active_streams == 0


def test_tenants_bounded() -> None:
    st = GatewayStats(max_tenants=3, window=4)
    for i in range(10):
        st.record_request(tenant_id=f"t{i}")
        st.record_success(0.001 * i, tenant_id=f"t{i}")
    s = st.snapshot()
    assert len(s.per_tenant) == 4 and s.per_tenant[OTHER]["requests"] == 7
    assert s.p99_latency_ms == 9  # window keeps the last 4 samples


def test_snapshot_is_a_copy() -> None:
    st = GatewayStats()
    st.record_request(tenant_id="a")
    snap = st.snapshot()
    st.record_request(tenant_id="a")
    assert snap.per_tenant["a"]["requests"] == 1
