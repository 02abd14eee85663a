"""Builders shared by the core tests (no network, fake clock)."""

from __future__ import annotations

from typing import Any

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig
from gateway.catalog import ModelCatalog, NodeInfo
from gateway.clock import FakeClock
from gateway.health import HealthChecker, HealthConfig, HealthState, NodeHealth
from gateway.policies import Candidate, Scores, build_candidate
from gateway.router import LoadBalanceStrategy, Router, RouterConfig
from shared.messages import Heartbeat, InferRequest, ModelInfo, Privacy, QoS


def req(capability: str = "generate", model: str | None = None, **qos: Any) -> InferRequest:
    """A request with the given QoS fields."""
    rid = qos.pop("request_id", "r1")
    tenant = qos.pop("tenant_id", None)
    return InferRequest(
        capability=capability, model=model, request_id=rid, tenant_id=tenant, qos=QoS(**qos)
    )


def hb(
    incarnation: str = "i1",
    models: tuple[tuple[str, tuple[str, ...]], ...] = (("m", ("generate",)),),
    **kw: Any,
) -> Heartbeat:
    """A heartbeat."""
    return Heartbeat(
        incarnation=incarnation,
        models=tuple(ModelInfo(model=m, capabilities=c) for m, c in models),
        **kw,
    )


def candidate(
    *,
    region: str = "us-west",
    latency_ms: float = 100.0,
    health: float = 1.0,
    throughput: float = 0.8,
    locality: float = 0.7,
    privacy: Privacy = Privacy.INTERNAL,
    cost: float = 0.5,
    p99_ms: float | None = None,
    samples: int = 0,
    tokens_per_s: float | None = None,
) -> Candidate:
    """The reference's mock candidate (region us-west, throughput 0.8, locality 0.7)."""
    node = NodeInfo(node_id="n1", region=region, privacy=privacy, cost=cost)
    h = NodeHealth(
        node_id="n1",
        status=HealthState.HEALTHY,
        latency_p50_ms=latency_ms,
        latency_p99_ms=p99_ms if p99_ms is not None else latency_ms,
        samples=samples,
        tokens_per_s=tokens_per_s,
    )
    scores = Scores(throughput=throughput, locality=locality, health=health)
    return Candidate(node, h, scores)


def real_candidate(node: NodeInfo, health: NodeHealth, request: InferRequest) -> Candidate:
    """A candidate built like the router builds them."""
    return build_candidate(node, health, request)


class World:
    """Catalog + health + breaker + router on one fake clock (LEAST_LATENCY unless a
    router config says otherwise)."""

    def __init__(
        self,
        router_config: RouterConfig | None = None,
        health_config: HealthConfig | None = None,
        breaker_config: CircuitBreakerConfig | None = None,
        policy: Any = None,
    ) -> None:
        self.clock = FakeClock()
        self.catalog = ModelCatalog(clock=self.clock)
        self.health = HealthChecker(health_config, clock=self.clock)
        self.breaker = CircuitBreaker(breaker_config, clock=self.clock)
        if router_config is None:  # the reference's deterministic strategy
            router_config = RouterConfig(strategy=LoadBalanceStrategy.LEAST_LATENCY)
        self.router = Router(
            self.catalog, self.health, self.breaker, router_config, policy, clock=self.clock
        )

    def healthy(self, node: str, latency_s: float = 0.05, n: int = 3) -> None:
        """Register a node with the health checker and report n successes."""
        self.health.register_node(node)
        for _ in range(n):
            self.health.report_success(node, latency_s)
