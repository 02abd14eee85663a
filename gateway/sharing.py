"""The state a gateway shares with the others of its queue group, each part optional:
request identity in JetStream KV (``idempotency``), attempt and canary outcomes on
``fed.outcomes`` (``share_outcomes``), the prefix index on ``fed.prefix.<node>``
(``prefix_routing``) and the fair-share counters on ``fed.fair`` (``fair_share``).

``build`` makes the parts a config turns on and hooks each into the engine, intake,
membership or router it feeds (docs/operations.md, "Shared state"); the service owns
and starts them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.engine import Engine
from gateway.handlers import Intake
from gateway.health import HealthChecker
from gateway.idempotency import Idempotency
from gateway.membership import Membership
from gateway.registry import Registry
from gateway.router import Router
from gateway.shared_fair import SharedFair
from gateway.shared_outcomes import SharedOutcomes
from gateway.shared_prefix import SharedPrefixes
from shared.config import GatewayConfig
from shared.subjects import Subjects


@dataclass(frozen=True, slots=True)
class Sharing:
    """The shared parts a gateway runs (None: off in its config)."""

    claims: Idempotency | None
    outcomes: SharedOutcomes | None
    prefixes: SharedPrefixes | None
    fair: SharedFair | None


def build(
    cfg: GatewayConfig,
    nc: Client,
    subjects: Subjects,
    gid: str,
    engine: Engine,
    intake: Intake,
    membership: Membership,
    router: Router,
    catalog: ModelCatalog,
    health: HealthChecker,
    breaker: CircuitBreaker,
    spawn: Callable[[Coroutine[Any, Any, Any], str], None],
    clock: Callable[[], float],
) -> Sharing:
    """The shared parts ``cfg`` turns on, each hooked into what it feeds."""
    claims = None
    if cfg.idempotency:
        registry = Registry(nc, cfg.idempotency_ttl_s, spawn)
        claims = Idempotency(nc, engine, subjects, gid, registry, cfg.idempotency_ttl_s)
        engine.claims = intake.claims = claims
    outcomes = None
    if cfg.share_outcomes:
        outcomes = SharedOutcomes(nc, subjects.outcomes, gid, health, breaker, spawn)
        engine.fleet.share = membership.share = outcomes.record
    prefixes = None
    if cfg.prefix_routing:
        prefixes = SharedPrefixes(nc, subjects, gid, router.prefixes, catalog, spawn, clock)
        router.affinity.publish = prefixes.record
    fair = None
    if cfg.fair_share:
        fair = SharedFair(
            nc, subjects.fair, gid, engine.waiting, engine.fleet, engine.capacity_changed,
            spawn, clock,
        )  # fmt: skip
    return Sharing(claims, outcomes, prefixes, fair)
