"""Policies: the reference policy tests with their numbers, plus the real inputs."""

from __future__ import annotations

import pytest

from gateway.catalog import NodeInfo
from gateway.health import HealthState, NodeHealth
from gateway.policies import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LoadPolicy,
    LocalityPolicy,
    PolicyKind,
    PrivacyPolicy,
    Scores,
    build_candidate,
    synthetic_health,
)
from shared.messages import Privacy
from tests.core.util import candidate, req

R = req()


# -- latency ---------------------------------------------------------------------------


def test_latency_prefers_fast() -> None:
    p = LatencyPolicy()
    fast, slow = p.score(candidate(latency_ms=100), R), p.score(candidate(latency_ms=4000), R)
    assert fast > slow and fast > 0.9


def test_latency_max_eligibility() -> None:
    p = LatencyPolicy(max_latency_s=2.0)
    assert p.is_eligible(candidate(latency_ms=1000), R)[0]
    ok, reason = p.is_eligible(candidate(latency_ms=3000), R)
    assert not ok and "latency" in reason


def test_latency_edges() -> None:
    p = LatencyPolicy()
    assert p.score(candidate(latency_ms=5000), R) == 0.0
    assert p.is_eligible(candidate(latency_ms=5000), R)[0]
    assert p.score(candidate(latency_ms=6000), R) == 0.0
    assert p.score(candidate(latency_ms=0), R) == 1.0
    assert LatencyPolicy(weight=2.0).score(candidate(latency_ms=0), R) == 2.0


def test_latency_boundary() -> None:
    p = LatencyPolicy(max_latency_s=1.0)
    assert p.is_eligible(candidate(latency_ms=1000), R)[0]
    assert not p.is_eligible(candidate(latency_ms=1001), R)[0]


def test_latency_qos_constraints() -> None:
    p = LatencyPolicy()
    strict = req(max_latency_ms=200)
    assert not p.is_eligible(candidate(latency_ms=50, p99_ms=300, samples=5), strict)[0]
    assert p.is_eligible(candidate(latency_ms=50, p99_ms=150, samples=5), strict)[0]
    assert p.is_eligible(candidate(latency_ms=50, p99_ms=300, samples=0), strict)[0]  # unmeasured
    fast = req(min_throughput=100)
    assert not p.is_eligible(candidate(tokens_per_s=50), fast)[0]
    assert p.is_eligible(candidate(tokens_per_s=150), fast)[0]
    assert p.is_eligible(candidate(tokens_per_s=None), fast)[0]  # unmeasured


# -- health ----------------------------------------------------------------------------


def test_health_prefers_healthy() -> None:
    p = HealthPolicy()
    assert p.score(candidate(health=1.0), R) > p.score(candidate(health=0.5), R)


def test_health_defaults_and_eligibility() -> None:
    p = HealthPolicy()
    assert (p.weight, p.healthy_score, p.degraded_score) == (2.0, 1.0, 0.3)
    assert not p.is_eligible(candidate(health=0.0), R)[0]
    assert p.is_eligible(candidate(health=0.01), R)[0]
    assert HealthPolicy(weight=3.0).score(candidate(health=1.0), R) == 3.0


# -- privacy ---------------------------------------------------------------------------


def test_privacy_scores_one() -> None:
    assert PrivacyPolicy().score(candidate(), R) == 1.0


def test_privacy_default_node_is_internal() -> None:
    p = PrivacyPolicy()
    assert p.is_eligible(candidate(), req(privacy=Privacy.INTERNAL))[0]
    ok, reason = p.is_eligible(candidate(), req(privacy=Privacy.CONFIDENTIAL))
    assert not ok and "privacy" in reason


@pytest.mark.parametrize(
    ("node_level", "request_level", "eligible"),
    [
        (Privacy.RESTRICTED, Privacy.RESTRICTED, True),
        (Privacy.PUBLIC, Privacy.PUBLIC, True),
        (Privacy.CONFIDENTIAL, Privacy.CONFIDENTIAL, True),
        (Privacy.PUBLIC, Privacy.CONFIDENTIAL, False),
        (Privacy.RESTRICTED, Privacy.PUBLIC, True),
        (Privacy.INTERNAL, Privacy.RESTRICTED, False),
    ],
)
def test_privacy_levels(node_level: Privacy, request_level: Privacy, eligible: bool) -> None:
    c = candidate(privacy=node_level)
    assert PrivacyPolicy().is_eligible(c, req(privacy=request_level))[0] is eligible


def test_privacy_residency() -> None:
    p = PrivacyPolicy()
    assert p.is_eligible(candidate(region="eu"), req(allowed_regions=("eu", "ch")))[0]
    ok, reason = p.is_eligible(candidate(region="us"), req(allowed_regions=("eu",)))
    assert not ok and "allowed_regions" in reason


# -- locality --------------------------------------------------------------------------


def test_locality_defaults_and_order() -> None:
    p = LocalityPolicy()
    assert (p.weight, p.same_region_boost, p.cross_region_penalty) == (1.0, 0.3, 0.1)
    assert p.score(candidate(locality=1.0), R) > p.score(candidate(locality=0.0), R)
    assert p.is_eligible(candidate(), R)[0]


def test_locality_real_regions() -> None:
    p = LocalityPolicy()
    node = NodeInfo(node_id="n", region="eu")
    h = synthetic_health("n")
    same = build_candidate(node, h, req(region="eu"))
    cross = build_candidate(node, h, req(region="us"))
    neutral = build_candidate(node, h, req())
    assert p.score(same, R) == pytest.approx(0.8)
    assert p.score(cross, R) == pytest.approx(0.4)
    assert p.score(neutral, R) == pytest.approx(0.65)
    assert p.bounds(req(region="eu"), True) == (pytest.approx(0.8), pytest.approx(0.8))


# -- cost ------------------------------------------------------------------------------


def test_cost_defaults_and_clamp() -> None:
    p = CostPolicy()
    assert p.weight == 1.0 and p.region_costs == {}
    p.with_region_cost("a", 1.5).with_region_cost("b", -0.5)
    assert p.region_costs == {"a": 1.0, "b": 0.0}
    assert p.score(candidate(region="a"), req(cost_tolerance=20)) == 0.0
    assert p.score(candidate(region="b"), req(cost_tolerance=20)) == 1.0


def test_cost_branches() -> None:
    p = CostPolicy()
    assert p.score(candidate(throughput=0.8), req(cost_tolerance=80)) == pytest.approx(0.8)
    assert p.score(candidate(cost=0.8), req(cost_tolerance=20)) == pytest.approx(0.2)
    assert p.score(candidate(region="nowhere"), req(cost_tolerance=20)) == pytest.approx(0.5)
    assert p.score(candidate(cost=0.3), req(cost_tolerance=50)) == pytest.approx(0.7)
    assert p.is_eligible(candidate(), R)[0]
    assert p.variant(req(cost_tolerance=50)) is False and p.variant(req(cost_tolerance=51)) is True


# -- load, gpu -------------------------------------------------------------------------


def test_load_policy() -> None:
    p = LoadPolicy()
    h = synthetic_health("n")
    idle = build_candidate(NodeInfo(node_id="a", capacity=4), h, R)
    busy = build_candidate(NodeInfo(node_id="b", capacity=4, remote_in_flight=3), h, R)
    full = build_candidate(NodeInfo(node_id="c", capacity=4, local_in_flight=9), h, R)
    assert p.score(idle, R) == 1.0 and p.score(busy, R) == 0.25 and p.score(full, R) == 0.0


def test_gpu_policy() -> None:
    p = GpuPolicy()
    h = synthetic_health("n")
    gpu = build_candidate(NodeInfo(node_id="a", gpu=True), h, R)
    cpu = build_candidate(NodeInfo(node_id="b"), h, R)
    assert p.score(gpu, R) == 1.0 and p.score(cpu, R) == 0.5
    assert p.score(cpu, req(prefer_gpu=False)) == 1.0


# -- composite -------------------------------------------------------------------------


def test_composite_empty() -> None:
    p = CompositePolicy()
    assert p.score(candidate(), R) == 1.0 and p.is_eligible(candidate(), R)[0]
    assert p.name == "composite"


def test_composite_all_pass_one_fail() -> None:
    p = CompositePolicy().with_policy(HealthPolicy()).with_policy(LatencyPolicy())
    assert p.is_eligible(candidate(), R)[0]
    assert not p.is_eligible(candidate(health=0.0), R)[0]
    assert p.rejected_by(candidate(health=0.0), R) == ["health"]


def test_composite_mean() -> None:
    p = CompositePolicy([HealthPolicy(weight=1.0), LatencyPolicy()])
    assert p.score(candidate(latency_ms=0), R) == 1.0


def test_enterprise_prefers_fast_healthy() -> None:
    p = CompositePolicy.enterprise_default()
    assert [m.name for m in p.policies] == ["health", "latency", "privacy", "locality", "cost"]
    good = p.score(candidate(latency_ms=100, health=1.0), R)
    bad = p.score(candidate(latency_ms=4000, health=0.2), R)
    assert good > bad


def test_enterprise_worked_numbers() -> None:
    """SEMANTICS §6: (3.15 + 2h - L/5000) / 5 with router-built candidates, no region."""
    p = CompositePolicy.enterprise_default()
    node = NodeInfo(node_id="n")
    healthy = NodeHealth(node_id="n", status=HealthState.HEALTHY)
    assert p.score(build_candidate(node, healthy, R), R) == pytest.approx(1.03)
    unregistered = synthetic_health("n")
    assert p.score(build_candidate(node, unregistered, R), R) == pytest.approx(0.71)


def test_scores_default_and_kinds() -> None:
    s = Scores()
    assert (s.latency, s.throughput, s.cost, s.locality, s.health, s.total) == (
        0.5,
        0.5,
        0.5,
        0.5,
        1.0,
        0.5,
    )
    p = CompositePolicy.enterprise_default()
    assert p.variant_key(req(cost_tolerance=80)) == (True,)
    assert p.dynamic_bounds(R, False) == (pytest.approx(0.65), pytest.approx(0.65))
    assert CompositePolicy([LoadPolicy(), CompositePolicy()]).dynamic_bounds(R, False) is None
    assert HealthPolicy.kind is PolicyKind.STATIC
