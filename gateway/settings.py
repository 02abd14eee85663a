"""A ``GatewayConfig`` translated into the configs of the gateway's parts (health,
circuit breaker, router, the router's prefix/SLO stage, the capacity queue). Pure."""

from __future__ import annotations

from gateway.affinity import AffinityConfig
from gateway.breaker import CircuitBreakerConfig
from gateway.core.fairqueue import FairQueue
from gateway.health import HealthConfig
from gateway.prefix_cost import PrefixCostModel
from gateway.router import LoadBalanceStrategy, RouterConfig
from shared.config import GatewayConfig


def health(cfg: GatewayConfig) -> HealthConfig:
    """The health checker's thresholds (``health_*``)."""
    return HealthConfig(
        failure_threshold=cfg.health_failure_threshold,
        recovery_threshold=cfg.health_recovery_threshold,
        degraded_latency_s=cfg.health_degraded_latency_s,
        check_interval_s=cfg.health_check_interval_s,
        # Successes that change no state reach the router at most every 50 ms per node.
        publish_interval_s=0.05,
    )


def breaker(cfg: GatewayConfig) -> CircuitBreakerConfig:
    """The circuit breaker's thresholds (``breaker_*``)."""
    return CircuitBreakerConfig(
        failure_threshold=cfg.breaker_failure_threshold,
        reset_timeout_s=cfg.breaker_reset_timeout_s,
        half_open_successes=cfg.breaker_half_open_successes,
        half_open_max_probes=cfg.breaker_half_open_probes,
    )


def affinity(cfg: GatewayConfig) -> AffinityConfig:
    """The prefix/SLO stage (``prefix_*``; ms a token to the cost model's seconds)."""
    cost = PrefixCostModel(
        prefill_s_per_token=cfg.prefix_prefill_ms_per_token / 1000.0,
        queue_s_per_load=cfg.prefix_queue_s_per_load,
    )
    return AffinityConfig(
        enabled=cfg.prefix_routing, block_bytes=cfg.prefix_block_bytes, ttl_s=cfg.prefix_ttl_s,
        max_entries=cfg.prefix_max_entries, cost=cost,
    )  # fmt: skip


def fair_queue(cfg: GatewayConfig) -> FairQueue:
    """The capacity queue: fair share (``fair_share``) by each tenant's ``weight`` and
    ``priority`` in ``tenant_limits`` (``"*"`` for tenants without an entry; none:
    weight 1, class 0), or oldest first."""
    limits = cfg.tenant_limits
    default = limits.get("*")

    def classes(tenant: str) -> tuple[float, int]:
        entry = limits.get(tenant, default)
        return (1.0, 0) if entry is None else (entry.weight, entry.priority)

    return FairQueue(cfg.fair_share, classes, default_max_tokens=cfg.default_max_tokens)


def router(cfg: GatewayConfig) -> RouterConfig:
    """The router's strategy (``strategy``; an unknown name is a ``ValueError``)."""
    try:
        strategy = LoadBalanceStrategy[cfg.strategy.upper()]
    except KeyError as exc:
        names = ", ".join(s.name.lower() for s in LoadBalanceStrategy)
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {names}") from exc
    return RouterConfig(strategy=strategy)
