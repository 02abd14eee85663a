"""Read models of one gateway: what inspection and metrics see, never the service itself.

Each view is a typed Struct of ``shared.messages`` (``NodesReply``, ``StatsReply``,
``RouteReply``, ``GatewayLoad``), built on demand from the fleet's state (catalog,
health, breakers, router), the counters and the engine's live figures. ``Control``
(the control subjects) and ``GatewayMetrics`` are handed these functions only.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.health import HealthChecker
from gateway.policies import Candidate
from gateway.router import Router
from gateway.stats import GatewayStats
from shared import messages as m
from shared.errors import FedError

_SCORE_FIELDS = ("health", "latency", "locality", "cost", "load", "gpu", "throughput")


def candidate_view(c: Candidate) -> m.CandidateView:
    """One candidate of a dry run: verdict, score and its breakdown, with the prefix
    stage's terms (cache match, predicted TTFT) and the node's engine signals."""
    engine = c.node.engine
    ttft = c.scores.ttft_ms
    return m.CandidateView(
        node_id=c.node_id,
        region=c.region,
        eligible=c.eligible,
        score=round(c.score, 4),
        reason=c.reason,
        scores={k: round(getattr(c.scores, k), 4) for k in _SCORE_FIELDS},
        contributions={k: round(v, 4) for k, v in c.contributions.items()},
        health=c.health.status.name.lower(),
        latency_p50_ms=c.health.latency_p50_ms,
        latency_p99_ms=c.health.latency_p99_ms,
        load=round(c.node.load, 4),
        privacy=str(c.node.privacy),
        cache_match=round(c.scores.cache, 4),
        running=engine.running if engine is not None else msgspec.UNSET,
        waiting=engine.waiting if engine is not None else msgspec.UNSET,
        kv_cache_usage=engine.kv_cache_usage if engine is not None else msgspec.UNSET,
        engine_ttft_p50_ms=engine.ttft_p50_ms if engine is not None else msgspec.UNSET,
        predicted_ttft_ms=round(ttft, 1) if ttft >= 0.0 else msgspec.UNSET,
    )


class Views:
    """Builds the read models of one gateway."""

    def __init__(
        self,
        gateway_id: str,
        *,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        router: Router,
        stats: GatewayStats,
        load: Callable[[], m.GatewayLoad],
        clock: Callable[[], float],
    ) -> None:
        self.gateway_id = gateway_id
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.router = router
        self.counters = stats
        self.load = load
        """The engine's live figures (in flight, queued, retries, failovers)."""
        self.clock = clock
        self.limits: Callable[[], list[m.TenantLimitView]] = list
        """Tenant limits at this gateway (the service sets it when limits are configured)."""

    def nodes(self) -> m.NodesReply:
        """``fed.gateway.nodes``: every node with its health, circuit and load."""
        now = self.clock()
        views = []
        for node in self.catalog.nodes():
            health = self.health.get_cached_health(node.node_id)
            views.append(
                m.NodeView(
                    node_id=node.node_id,
                    region=node.region,
                    models=[
                        m.ModelInfo(model=k, capabilities=sorted(v))  # type: ignore[arg-type]
                        for k, v in node.models.items()
                    ],
                    health=health.status.name.lower() if health else "unknown",
                    latency_p50_ms=health.latency_p50_ms if health else None,
                    latency_p90_ms=health.latency_p90_ms if health else None,
                    latency_p99_ms=health.latency_p99_ms if health else None,
                    circuit=self.breaker.state(node.node_id).name.lower(),
                    failures=self.breaker.failures(node.node_id),
                    in_flight=node.local_in_flight + node.remote_in_flight,
                    capacity=node.capacity,
                    privacy=str(node.privacy),
                    cost=node.cost,
                    gpu=node.gpu,
                    draining=node.draining,
                    labels=node.labels,
                    incarnation=node.incarnation,
                    heartbeat_age_ms=round((now - node.last_seen) * 1000, 1),
                    tokens_per_s=node.tokens_per_s,
                    tpot_p50_ms=health.tpot_p50_ms
                    if health and health.tpot_samples
                    else msgspec.UNSET,
                )
            )
        return m.NodesReply(gateway=self.gateway_id, nodes=views)

    def stats(self) -> m.StatsReply:
        """``fed.gateway.stats``: the counters and this gateway's live figures."""
        snap = self.counters.snapshot()
        load = self.load()
        router = self.router
        policies = getattr(router.policy, "policies", [router.policy])
        return m.StatsReply(
            total_requests=snap.total_requests,
            successful_requests=snap.successful_requests,
            failed_requests=snap.failed_requests,
            total_tokens=snap.total_tokens,
            active_streams=snap.active_streams,
            avg_latency_ms=snap.avg_latency_ms,
            p50_latency_ms=snap.p50_latency_ms,
            p99_latency_ms=snap.p99_latency_ms,
            per_node=snap.per_node,
            per_tenant=snap.per_tenant,
            uptime_s=snap.uptime_s,
            gateway=self.gateway_id,
            strategy=router.config.strategy.name.lower(),
            policies=[
                m.PolicyWeight(name=p.name, weight=getattr(p, "weight", 1.0)) for p in policies
            ],
            in_flight=load.in_flight,
            queued=load.queued,
            retries=load.retries,
            failovers=load.failovers,
            nodes=len(self.catalog.nodes()),
            healthy_nodes=self.health.healthy_count(),
            limits=self.limits() or msgspec.UNSET,
        )

    def route(self, request: m.InferRequest) -> m.RouteReply:
        """A dry run: every candidate with its score breakdown; nothing is dispatched."""
        candidates = self.router.get_candidates(request)
        chosen: str | None = None
        try:  # what routing would choose now: the strategy and the prefix/SLO stage too
            chosen = self.router.route(request).node.node_id
        except FedError:
            pass
        else:
            self.breaker.release(chosen)  # a dry run holds no half-open probe slot
        return m.RouteReply(
            gateway=self.gateway_id,
            capability=request.capability,
            chosen=chosen,
            candidates=[candidate_view(c) for c in candidates],
        )
