"""The gateway's inspection surface: ``fed.gateway.{nodes,stats,route.<cap>}`` and ``$SRV``.

Every gateway answers these itself (no queue group) and names itself in the reply, so
``nats req`` shows the first answer and fedgate's CLI gathers all of them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import errors
from shared import headers as h
from shared import messages as m

if TYPE_CHECKING:
    from gateway.policies import Candidate
    from gateway.service import GatewayService

log = logging.getLogger("fedgate.gateway")

VERSION = "0.1.0"


_SCORE_FIELDS = ("health", "latency", "locality", "cost", "load", "gpu", "throughput")


def explain(c: Candidate) -> dict[str, Any]:
    """One candidate of a dry run: verdict, score and its breakdown."""
    return {
        "node_id": c.node_id,
        "region": c.region,
        "eligible": c.eligible,
        "score": round(c.score, 4),
        "reason": c.reason,
        "scores": {k: round(getattr(c.scores, k), 4) for k in _SCORE_FIELDS},
        "contributions": {k: round(v, 4) for k, v in c.contributions.items()},
        "health": c.health.status.name.lower(),
        "latency_p50_ms": c.health.latency_p50_ms,
        "latency_p99_ms": c.health.latency_p99_ms,
        "load": round(c.node.load, 4),
        "privacy": str(c.node.privacy),
    }


class Control:
    """Answers the control subjects of one gateway."""

    def __init__(self, service: GatewayService) -> None:
        self.svc = service
        self._micro: Any = None

    async def subscribe(self) -> list[Subscription]:
        """Subscribe the control subjects and register with NATS service discovery."""
        s = self.svc.subjects
        nc = self.svc.nc
        subs = [
            await nc.subscribe(s.gateway_nodes, cb=self._on_nodes),
            await nc.subscribe(s.gateway_stats, cb=self._on_stats),
            await nc.subscribe(s.gateway_route_all, cb=self._on_route),
        ]
        try:
            from nats import micro

            self._micro = await micro.add_service(
                nc,
                name="fedgate-gateway",
                version=VERSION,
                description="fedgate federation gateway: routes infer.<capability> to nodes",
                metadata={"gateway_id": self.svc.gateway_id},
            )
        except Exception as exc:
            log.warning("service discovery ($SRV) unavailable: %s", exc)
        return subs

    async def close(self) -> None:
        """Leave service discovery."""
        if self._micro is not None:
            with contextlib.suppress(Exception):
                await self._micro.stop()
            self._micro = None

    # -- views ---------------------------------------------------------------------

    def nodes_view(self) -> dict[str, Any]:
        """``{"gateway", "nodes": [...]}`` for ``fed.gateway.nodes``."""
        svc = self.svc
        now = svc.clock()
        nodes = []
        for node in svc.catalog.nodes():
            health = svc.health.get_cached_health(node.node_id)
            nodes.append(
                {
                    "node_id": node.node_id,
                    "region": node.region,
                    "models": [
                        {"model": k, "capabilities": sorted(v)} for k, v in node.models.items()
                    ],
                    "health": health.status.name.lower() if health else "unknown",
                    "latency_p50_ms": health.latency_p50_ms if health else None,
                    "latency_p90_ms": health.latency_p90_ms if health else None,
                    "latency_p99_ms": health.latency_p99_ms if health else None,
                    "circuit": svc.breaker.state(node.node_id).name.lower(),
                    "failures": svc.breaker.failures(node.node_id),
                    "in_flight": max(node.in_flight, node.local_in_flight),
                    "capacity": node.capacity,
                    "privacy": str(node.privacy),
                    "cost": node.cost,
                    "gpu": node.gpu,
                    "draining": node.draining,
                    "labels": node.labels,
                    "incarnation": node.incarnation,
                    "heartbeat_age_ms": round((now - node.last_seen) * 1000, 1),
                    "tokens_per_s": node.tokens_per_s,
                }
            )
        return {"gateway": svc.gateway_id, "nodes": nodes}

    def stats_view(self) -> dict[str, Any]:
        """The stats snapshot plus this gateway's live figures."""
        svc = self.svc
        snap: dict[str, Any] = msgspec.to_builtins(svc.stats.snapshot())
        snap.update(
            gateway=svc.gateway_id,
            strategy=svc.router.config.strategy.name.lower(),
            policies=[
                {"name": p.name, "weight": getattr(p, "weight", 1.0)}
                for p in getattr(svc.router.policy, "policies", [svc.router.policy])
            ],
            in_flight=svc.in_flight,
            queued=svc.queued,
            retries=svc.retries,
            failovers=svc.failovers,
            nodes=len(svc.catalog.nodes()),
            healthy_nodes=svc.health.healthy_count(),
        )
        return snap

    def route_view(self, request: m.InferRequest) -> dict[str, Any]:
        """A dry run: every candidate with its score breakdown; nothing is dispatched."""
        svc = self.svc
        candidates = svc.router.get_candidates(request)
        chosen = next((c.node.node_id for c in candidates if c.eligible), None)
        return {
            "gateway": svc.gateway_id,
            "capability": request.capability,
            "chosen": chosen,
            "candidates": [explain(c) for c in candidates],
        }

    # -- handlers ------------------------------------------------------------------

    async def _respond(self, msg: Msg, body: Any) -> None:
        if msg.reply:
            await self.svc.nc.publish(msg.reply, m.encode(body))

    async def _on_nodes(self, msg: Msg) -> None:
        await self._respond(msg, self.nodes_view())

    async def _on_stats(self, msg: Msg) -> None:
        await self._respond(msg, self.stats_view())

    async def _on_route(self, msg: Msg) -> None:
        if not msg.reply:
            return
        capability = self.svc.subjects.last_token(msg.subject)
        try:
            request = m.request_decoder.decode(msg.data or b"{}")
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            err = errors.BadRequest(f"invalid request: {exc}")
            await self.svc.nc.publish(msg.reply, b"", headers=err.headers())
            return
        request = msgspec.structs.replace(request, capability=capability)
        try:
            view = self.route_view(request)
        except errors.FedError as exc:
            await self.svc.nc.publish(msg.reply, b"", headers=exc.headers())
            return
        await self.svc.nc.publish(msg.reply, m.encode(view), headers={h.STATUS: "ok"})
