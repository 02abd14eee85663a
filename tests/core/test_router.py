"""Router: the reference routing tests, the full-flow routing part, errors, strategies."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.breaker import CircuitBreakerConfig, CircuitState
from gateway.health import HealthConfig, HealthState
from gateway.policies import PrivacyPolicy
from gateway.router import LoadBalanceStrategy, RouterConfig
from shared.errors import AllNodesUnhealthy, NoCapacity, Overloaded, PolicyViolation
from shared.messages import Privacy
from tests.core.util import World, hb, req

S = LoadBalanceStrategy


def test_config_defaults() -> None:
    c = RouterConfig()
    # Issue 12: the default spreads load (the reference's default was LEAST_LATENCY).
    assert (c.max_candidates, c.min_score, c.strategy, c.seed) == (10, 0.1, S.POWER_OF_TWO, None)
    assert (c.spread_tolerance, c.spread_tolerance_ms, c.challenge) == (0.25, 5.0, 8.0)
    assert (c.explore_max_in_flight, c.explore_samples) == (1, 4)


def test_route_no_nodes() -> None:
    w = World()
    with pytest.raises(NoCapacity, match="generate"):
        w.router.route(req())


def test_wrong_capability() -> None:
    w = World()
    w.catalog.register("m", "n1", "us", ["embed"])
    with pytest.raises(NoCapacity):
        w.router.route(req("generate"))


def test_skips_circuit_open() -> None:
    w = World()
    w.catalog.register("m", "n1", "us", ["generate"])
    w.healthy("n1")
    for _ in range(5):
        w.breaker.record_failure("n1")
    with pytest.raises(NoCapacity):
        w.router.route(req())


def test_skips_unhealthy() -> None:
    w = World(health_config=HealthConfig(failure_threshold=2))
    w.catalog.register("m", "n1", "us", ["generate"])
    w.health.register_node("n1")
    for _ in range(3):
        w.health.report_failure("n1")
    with pytest.raises(NoCapacity):
        w.router.route(req())


def test_prefers_healthy() -> None:
    w = World()
    w.catalog.register("m", "a", "us", ["generate"])
    w.catalog.register("m", "b", "us", ["generate"])
    w.health.register_node("a")
    w.health.register_node("b")
    for _ in range(5):
        w.health.report_success("a", 0.02)
        w.health.report_failure("b")
    assert w.router.route(req()).node_id == "a"


def test_get_candidates_returns_all() -> None:
    w = World()
    for n in ("a", "b", "c"):
        w.catalog.register("m", n, "us", ["generate"])
    assert len(w.router.get_candidates(req())) == 3


def test_get_candidates_with_rejected() -> None:
    w = World(policy=PrivacyPolicy())
    w.catalog.register("m", "us-node", "us-west", ["generate"], privacy=Privacy.PUBLIC)
    cands = w.router.get_candidates(req(privacy=Privacy.CONFIDENTIAL))
    assert len(cands) == 1 and not cands[0].eligible and cands[0].reason
    with pytest.raises(PolicyViolation):
        w.router.route(req(privacy=Privacy.CONFIDENTIAL))


def test_min_score_filters() -> None:
    w = World(RouterConfig(min_score=0.99))
    w.catalog.register("m", "n1", "us", ["generate"])
    w.health.register_node("n1")
    with pytest.raises(AllNodesUnhealthy):
        w.router.route(req())


@pytest.mark.parametrize("strategy", list(LoadBalanceStrategy))
def test_single_node_every_strategy(strategy: LoadBalanceStrategy) -> None:
    w = World(RouterConfig(strategy=strategy, seed=1))
    w.catalog.register("m", "n1", "us", ["generate"])
    w.healthy("n1")
    assert w.router.route(req()).node_id == "n1"


def test_full_federation_flow_routing() -> None:
    w = World(RouterConfig(max_candidates=10, min_score=0.1, strategy=S.LEAST_LATENCY))
    cat, hc = w.catalog, w.health
    cat.register("whisper-v3", "us-west-gpu", "us-west", ["transcribe"])
    cat.register("whisper-v3", "eu-west-gpu", "eu-west", ["transcribe"])
    cat.register("llama-70b", "us-east-gpu", "us-east", ["generate", "code"])
    cat.register("bge-large", "embed-us", "us-west", ["embed"])
    cat.register("bge-large", "embed-eu", "eu-west", ["embed"])
    w.healthy("us-west-gpu", 0.045)
    w.healthy("eu-west-gpu", 0.120)
    w.healthy("us-east-gpu", 0.100, n=1)
    w.healthy("embed-us", 0.015)
    w.healthy("embed-eu", 0.015)
    assert len(w.router.get_candidates(req("transcribe", tenant_id="acme"))) == 2
    assert w.router.route(req("transcribe")).node_id == "us-west-gpu"
    assert hc.get_cached_health("us-east-gpu").status is HealthState.UNKNOWN  # type: ignore[union-attr]
    assert w.router.route(req("generate")).node_id == "us-east-gpu"
    assert len(w.router.get_candidates(req("embed"))) == 2
    assert len(cat.list_all()) == 3
    assert w.breaker.state("failing-node") is CircuitState.CLOSED
    for _ in range(5):
        w.breaker.record_failure("failing-node")
    assert w.breaker.is_open("failing-node")


# -- fedgate behaviour -------------------------------------------------------------------


def fleet(w: World, n: int = 4, region: str = "us") -> None:
    for i in range(n):
        w.catalog.apply_heartbeat(f"n{i}", hb(region=region, capacity=2))
        w.healthy(f"n{i}", 0.01 * (i + 1))


def test_route_follows_health_reports() -> None:
    w = World()
    fleet(w)
    assert w.router.route(req()).node_id == "n0"
    for _ in range(128):
        w.health.report_success("n0", 0.9)
    assert w.router.route(req()).node_id == "n1"
    w.health.report_failure("n1")  # first failure: Degraded
    assert w.router.route(req()).node_id == "n2"


def test_exclude_draining_capacity_overloaded() -> None:
    w = World()
    fleet(w, 3)
    assert w.router.route(req(), exclude={"n0"}).node_id == "n1"
    w.catalog.apply_heartbeat("n1", hb(region="us", capacity=2, draining=True))
    assert w.router.route(req(), exclude={"n0"}).node_id == "n2"
    w.catalog.add_in_flight("n2", 2)
    with pytest.raises(Overloaded):
        w.router.route(req(), exclude={"n0"})
    reasons = {c.node_id: c.reason for c in w.router.get_candidates(req())}
    assert reasons == {"n0": "", "n1": "draining", "n2": "at capacity"}
    with pytest.raises(NoCapacity):
        w.router.route(req(), exclude={"n0", "n1", "n2"})


def test_all_draining_is_all_unhealthy() -> None:
    w = World()
    w.catalog.apply_heartbeat("n", hb(draining=True))
    with pytest.raises(AllNodesUnhealthy):
        w.router.route(req())


def test_privacy_and_residency_errors() -> None:
    w = World()
    fleet(w, 2)
    with pytest.raises(PolicyViolation):
        w.router.route(req(privacy=Privacy.RESTRICTED))
    with pytest.raises(PolicyViolation):
        w.router.route(req(allowed_regions=("eu",)))
    w.catalog.apply_heartbeat("eu1", hb(region="eu", privacy=Privacy.RESTRICTED))
    assert w.router.route(req(privacy=Privacy.RESTRICTED)).node_id == "eu1"
    assert w.router.route(req(allowed_regions=("eu",))).node_id == "eu1"


def test_locality_prefers_own_region() -> None:
    w = World()
    fleet(w, 3, "us")
    w.catalog.apply_heartbeat("eu1", hb(region="eu"))
    w.healthy("eu1", 0.2)
    assert w.router.route(req(region="eu")).node_id == "eu1"
    assert w.router.route(req(region="us")).node_id == "n0"
    assert w.router.route(req(region="mars")).node_id == "n0"


def test_model_filter_and_catalog_changes() -> None:
    w = World()
    w.catalog.apply_heartbeat("a", hb(models=(("llama", ("generate",)),)))
    w.catalog.apply_heartbeat("b", hb(models=(("qwen", ("generate",)),)))
    w.healthy("a", 0.01)
    w.healthy("b", 0.5)
    assert w.router.route(req(model="qwen")).node_id == "b"
    assert w.router.route(req()).node_id == "a"
    w.catalog.apply_heartbeat("a", hb(models=(("qwen", ("generate",)),)))
    assert w.router.route(req(model="qwen")).node_id == "a"
    w.catalog.remove_node("a")
    assert w.router.route(req(model="qwen")).node_id == "b"
    with pytest.raises(NoCapacity):
        w.router.route(req(model="llama"))


def test_half_open_single_probe() -> None:
    w = World(breaker_config=CircuitBreakerConfig(failure_threshold=1, reset_timeout_s=5))
    fleet(w, 2)
    w.breaker.record_failure("n0")
    assert w.router.route(req()).node_id == "n1"
    w.clock.advance(5)
    assert w.router.route(req()).node_id == "n0"  # the probe
    assert w.breaker.state("n0") is CircuitState.HALF_OPEN
    assert w.router.route(req()).node_id == "n1"  # probe slot busy
    w.breaker.record_success("n0")
    assert w.router.route(req()).node_id == "n0"


def test_round_robin_and_least_connections() -> None:
    w = World(RouterConfig(strategy=S.ROUND_ROBIN))
    fleet(w, 3)
    assert [w.router.route(req()).node_id for _ in range(6)] == ["n0", "n1", "n2"] * 2
    w2 = World(RouterConfig(strategy=S.LEAST_CONNECTIONS))
    fleet(w2, 3)
    w2.catalog.add_in_flight("n0", 1)
    w2.catalog.apply_heartbeat("n1", hb(region="us", capacity=2, in_flight=1))
    assert w2.router.route(req()).node_id == "n2"


def test_weighted_random_and_power_of_two_are_seeded() -> None:
    picks = []
    for _ in range(2):
        w = World(RouterConfig(strategy=S.WEIGHTED_RANDOM, seed=7))
        fleet(w, 4)
        picks.append([w.router.route(req()).node_id for _ in range(50)])
    assert picks[0] == picks[1] and len(set(picks[0])) == 4
    # Issue 12: POWER_OF_TWO draws from the near-best band (here four equal nodes), not
    # from the ten best whatever their latency; the less loaded of two wins.
    runs = []
    for _ in range(2):
        w = World(RouterConfig(strategy=S.POWER_OF_TWO, seed=3))
        for i in range(4):
            w.catalog.apply_heartbeat(f"n{i}", hb(region="us", capacity=2))
            w.healthy(f"n{i}", 0.02)
        for i in range(3):
            w.catalog.add_in_flight(f"n{i}", 1)
        runs.append([w.router.route(req()).node_id for _ in range(200)])
    counts = Counter(runs[0])
    # n3 is in half of the pairs and wins each: about 100 of 200 (a uniform choice: 50)
    assert runs[0] == runs[1] and counts["n3"] > 80, counts


def test_consistent_hash_affinity() -> None:
    w = World(RouterConfig(strategy=S.CONSISTENT_HASH))
    fleet(w, 5)
    first = {t: w.router.route(req(tenant_id=t)).node_id for t in map(str, range(50))}
    again = {t: w.router.route(req(tenant_id=t)).node_id for t in map(str, range(50))}
    assert first == again and len(set(first.values())) > 1


def test_get_candidates_explains() -> None:
    w = World()
    fleet(w, 2)
    w.breaker.record_failure("n1")
    for _ in range(4):
        w.breaker.record_failure("n1")
    cands = w.router.get_candidates(req())
    assert [c.node_id for c in cands] == ["n0", "n1"]
    assert cands[0].eligible and cands[0].score == cands[0].scores.total > 1.0
    assert set(cands[0].contributions) == {"health", "latency", "privacy", "locality", "cost"}
    assert cands[1].reason == "circuit open"


def test_with_policy_rebuilds() -> None:
    w = World()
    fleet(w, 2)
    assert w.router.route(req()).node_id == "n0"
    w.router.with_policy(PrivacyPolicy())
    assert w.router.route(req()).node_id in {"n0", "n1"}
