"""The gateway service: the composition root that wires the federation core to NATS.

    infer.<cap>     ──▶ handlers.Intake.on_request ─┐
    fed.cancel.*    ──▶ handlers.Intake.on_cancel  ─┤
    <inbox>.>       ──▶ relay.Relay.on_reply       ─┼─▶ engine.Engine ─▶ wire.Wire ─▶ NATS
    HTTP front door ──▶ local.LocalClient          ─┤    │ decides with core.lifecycle
    every 50 ms     ──▶ sweeper.Sweeper.run        ─┘    └ observes via recorder.Recorder
    fed.heartbeat.*, fed.leave.* ──▶ membership.Membership ──▶ catalog, health, breakers
    fed.gateway.*    ──▶ control.Control ◀── views.Views (read models)

This module builds those parts, owns the one task group (sweeper, prober, retry timers,
queue drains, canaries) and one exit stack, and stops in three steps: intake off, a
bounded wait for requests in flight, then the rest answered ``Interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from gateway import settings, sharing
from gateway.breaker import CircuitBreaker
from gateway.catalog import CatalogEvent, ModelCatalog, NodeInfo
from gateway.control import Control
from gateway.core.lifecycle import Lifecycle, Limits
from gateway.core.table import FlightTable
from gateway.decisions import Decisions
from gateway.engine import Engine
from gateway.fleet import Fleet
from gateway.handlers import Intake
from gateway.health import HealthChecker
from gateway.membership import Membership
from gateway.quota import Limiter
from gateway.quota_store import DegradingStore, LeaseStore, LocalStore
from gateway.recorder import Recorder
from gateway.relay import Relay
from gateway.router import Router
from gateway.service_figures import Figures
from gateway.stats import GatewayStats
from gateway.sweeper import Sweeper
from gateway.views import Views
from gateway.wire import Wire
from shared import errors, telemetry
from shared.config import GatewayConfig
from shared.subjects import GATEWAY_QUEUE, Subjects

log = logging.getLogger("fedgate.gateway")


class GatewayService(Figures):
    """One gateway process: routes ``infer.>`` requests to nodes and relays replies."""

    def __init__(
        self,
        nc: Client,
        config: GatewayConfig | None = None,
        *,
        catalog: ModelCatalog | None = None,
        health: HealthChecker | None = None,
        breaker: CircuitBreaker | None = None,
        router: Router | None = None,
        stats: GatewayStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.config = cfg = config or GatewayConfig()
        self.gateway_id = gid = cfg.gateway_id or f"gw-{secrets.token_hex(4)}"
        self.subjects = subjects = Subjects(cfg.public_root, cfg.internal_root)
        self.clock = clock
        # The fleet: plain objects on one clock (explicit None checks: empty is falsy).
        self.catalog = catalog if catalog is not None else ModelCatalog(clock=clock)
        self.health = (
            health if health is not None else HealthChecker(settings.health(cfg), clock=clock)
        )
        self.breaker = (
            breaker if breaker is not None else CircuitBreaker(settings.breaker(cfg), clock)
        )
        if router is None:
            router = Router(
                self.catalog, self.health, self.breaker, settings.router(cfg), clock=clock,
                affinity=settings.affinity(cfg),
            )  # fmt: skip
        self.router = router
        self.stats = stats if stats is not None else GatewayStats(clock=clock)
        self.decisions = Decisions(
            nc, subjects.decisions, gid, publish=cfg.decisions, access_log=cfg.access_log,
            clock=clock,
        )  # fmt: skip
        strategy = router.config.strategy.name.lower()
        self.recorder = Recorder(self.stats, self.decisions, gid, strategy, clock)
        self.wire = Wire(nc, subjects, gid)
        self.engine = engine = Engine(
            fleet=Fleet(self.catalog, self.health, self.breaker, router), wire=self.wire,
            recorder=self.recorder, lifecycle=Lifecycle(Limits.of(cfg)),
            table=FlightTable(
                nc.new_inbox(), secrets.token_hex(6), cfg.poison_after_nodes,
                settings.fair_queue(cfg),
            ),
            request_timeout_s=cfg.request_timeout_s, spawn=self._spawn, clock=clock,
            direct=cfg.direct_replies,
        )  # fmt: skip
        self.intake = Intake(nc, engine, subjects, cfg.max_payload_bytes)
        self.relay = Relay(engine)
        self.views = Views(
            gid, catalog=self.catalog, health=self.health, breaker=self.breaker, router=router,
            stats=self.stats, load=self.load, clock=clock,
        )  # fmt: skip
        self.control = Control(
            nc, subjects, gid, nodes=self.views.nodes, stats=self.views.stats,
            route=self.views.route,
        )  # fmt: skip
        self.membership = Membership(
            nc, subjects, self.catalog, self.health, self.breaker, lost=engine.node_lost,
            changed=engine.capacity_changed, connected=lambda: engine.connected,
            spawn=self._spawn,
        )  # fmt: skip
        shared = sharing.build(
            cfg, nc, subjects, gid, engine, self.intake, self.membership, router, self.catalog,
            self.health, self.breaker, self._spawn, clock,
        )  # fmt: skip
        self.claims = shared.claims
        """Request identity across gateways (gateway/idempotency.py), when on."""
        self.outcomes, self.prefixes, self.fair = shared.outcomes, shared.prefixes, shared.fair
        self.catalog.add_listener(self._on_catalog)
        self.decisions.terms = router.affinity.pop_terms
        self.sweeper = Sweeper(
            engine, self.health, self.decisions, self.membership, cfg.liveness_probe_s
        )
        self.metrics: Any = None
        """A ``gateway.metrics.GatewayMetrics`` when metrics are exported, else None."""
        self.metrics_port: int | None = None
        self._subs: list[Subscription] = []
        """Every subscription; the intake (``infer.>``) is the last one."""
        self._stack: contextlib.AsyncExitStack | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to everything and start the background loops."""
        stack = self._stack = contextlib.AsyncExitStack()
        if self.config.metrics_port is not None:
            from gateway.metrics import GatewayMetrics

            self.metrics = GatewayMetrics(
                self.gateway_id, load=self.load, fleet=self.views.nodes,
                limits=lambda: self.views.limits(),
            )  # fmt: skip
            stack.push_async_callback(self.metrics.close)
            self.recorder.metrics = self.metrics
        stack.push_async_callback(self.control.close)
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._unsubscribe)
        stack.callback(self._cancel_tasks)  # first out: the loops end, then the group waits
        try:
            await self._limits(stack)
            if self.claims is not None:  # the bucket, or per gateway with a warning
                await self.claims.registry.open()
                stack.push_async_callback(self.claims.close)
            await self._subscribe()
            telemetry.setup("fedgate-gateway")  # no-op unless OTEL_TRACES_EXPORTER is set
            if self.metrics is not None:
                port = self.config.metrics_port or 0
                self.metrics_port = await self.metrics.serve(port, self.config.http_host)
        except BaseException:
            self._stack = None
            self._group = None
            await stack.aclose()
            raise
        self._spawn(self.sweeper.run(), "sweeper")
        if self.claims is not None:
            self._spawn(self.claims.run(), "claims")
        if self.engine.limiter is not None:
            self._spawn(self.engine.limiter.renew_loop(), "limits")
        self._spawn(self.membership.probe_loop(self.config.probe_interval_s), "prober")
        if self.fair is not None:
            self._spawn(self.fair.run(), "fair-share")

    async def _limits(self, stack: contextlib.AsyncExitStack) -> None:
        """Tenant limits, when configured: their store (``kv``: the JetStream bucket, or
        this gateway alone while it does not answer, with a warning), given back on stop."""
        cfg = self.config
        if not any(t.limited for t in cfg.tenant_limits.values()):
            return  # none, or only fair-share weights
        if cfg.limits_store not in ("kv", "local"):
            raise ValueError(f"limits_store must be kv or local, not {cfg.limits_store!r}")
        store: LeaseStore = LocalStore() if cfg.limits_store == "local" else DegradingStore(self.nc)
        limiter = Limiter(
            cfg.tenant_limits, store, self.gateway_id, default_max_tokens=cfg.default_max_tokens
        )
        stack.push_async_callback(limiter.close)
        self.engine.limiter = limiter
        self.views.limits = limiter.views

    async def _subscribe(self) -> None:
        s, subscribe = self.subjects, self.nc.subscribe
        self._subs += [
            await subscribe(f"{self.engine.inbox}.>", cb=self.relay.on_reply),
            await subscribe(s.heartbeat_all, cb=self.membership.on_heartbeat),
            await subscribe(s.leave_all, cb=self.membership.on_leave),
            await subscribe(s.cancel_all, cb=self.intake.on_cancel),
        ]
        self._subs += await self.control.subscribe()
        if self.outcomes is not None:
            self._subs.append(await self.outcomes.subscribe())
        if self.prefixes is not None:
            self._subs.append(await self.prefixes.subscribe())
        if self.fair is not None:
            self._subs.append(await self.fair.subscribe())
        if self.claims is not None:
            takeover = s.takeover(self.gateway_id)
            self._subs.append(await subscribe(takeover, cb=self.claims.on_takeover))
        await self.nc.flush()
        # Intake last: the catalog fills from heartbeats first.
        self._subs.append(await subscribe(s.infer_all, queue=GATEWAY_QUEUE, cb=self._on_request))
        await self.nc.flush()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop intake, let in-flight requests finish (bounded), then end the rest."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self._subs:
            with contextlib.suppress(Exception):
                await self._subs[-1].unsubscribe()
        engine = self.engine
        if engine.flights:
            engine.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.idle.wait(), grace_s)
        for flight in list(engine.flights.values()):
            await engine.finish_error(flight, errors.Interrupted("gateway shutting down"))
        self._group = None  # nothing new begins
        await stack.aclose()

    def on_disconnect(self) -> None:
        """NATS connection lost: nothing seen from now on counts against a node."""
        self.engine.link(False)

    def on_reconnect(self) -> None:
        """NATS connection back."""
        self.engine.link(True)

    def _on_catalog(self, event: CatalogEvent, node: NodeInfo) -> None:
        """A node that left (or restarted) holds nothing the index believed it held."""
        if event is CatalogEvent.REMOVED:
            self.router.prefixes.remove_node(node.node_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` in the service's task group (its failure is logged, never fatal)."""
        group = self._group
        if group is None:
            coro.close()  # not started, or stopped: nothing new begins
            return
        task = group.create_task(_logged(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: coro.close())  # cancelled before it began: no warning

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _unsubscribe(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("%s failed", name)
