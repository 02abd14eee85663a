"""What the model catalog holds and tells: node records, change events, reference shapes.

``NodeInfo`` is the gateway's record of one node (from its last heartbeat or a reference
registration; times in seconds of the catalog clock, ``interval_ms`` and ``started_ms`` in
milliseconds, ``load`` a fraction of capacity). ``HeartbeatOutcome`` and ``CatalogEvent``
say what a change did; ``ModelMetadata``, ``Deployment`` and ``ModelEntry`` are the answers
of the reference API (``ModelCatalog.get``). ``gateway.catalog`` re-exports them all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared.messages import Heartbeat, ModelInfo, Privacy

STATIC_CAPACITY = 1_000_000
"""Capacity given to nodes registered through the reference API (effectively unbounded)."""


@dataclass(slots=True, eq=False)
class NodeInfo:
    """What the gateway knows about one node (from its last heartbeat or a registration)."""

    node_id: str
    region: str = "default"
    models: dict[str, frozenset[str]] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    capacity: int = STATIC_CAPACITY
    in_flight: int = 0
    local_in_flight: int = 0
    privacy: Privacy = Privacy.INTERNAL
    cost: float = 0.5
    gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    incarnation: str = ""
    started_ms: int = 0
    interval_ms: int = 1000
    last_seen: float = 0.0
    queue_depth: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    seq: int = 0
    """Catalog insertion number: the stable tie-breaker of every ranking."""

    @property
    def load(self) -> float:
        """max(reported in-flight, own dispatches) / capacity (can exceed 1.0)."""
        return max(self.in_flight, self.local_in_flight) / self.capacity

    @property
    def at_capacity(self) -> bool:
        """True when this gateway's own dispatches fill the node's declared capacity."""
        return self.local_in_flight >= self.capacity

    @property
    def static(self) -> bool:
        """True for nodes registered through the reference API (they never expire)."""
        return not self.incarnation


class HeartbeatOutcome(enum.Enum):
    """What a heartbeat did to the catalog."""

    NEW = "new"
    UPDATED = "updated"
    REPLACED = "replaced"
    STALE = "stale"


class CatalogEvent(enum.Enum):
    """What listeners are told (the router keeps its orderings with these)."""

    ADDED = "added"
    REMOVED = "removed"
    MOVED = "moved"
    """Models, capabilities or region changed: index membership changed."""
    CHANGED = "changed"
    """A scoring input (cost, gpu, tokens_per_s) changed; memberships did not."""


CatalogListener = Callable[[CatalogEvent, NodeInfo], None]
"""Called synchronously after each catalog change."""


@dataclass(slots=True, frozen=True)
class ModelMetadata:
    """Metadata of a model (reference shape)."""

    model_id: str
    name: str
    version: str
    capabilities: list[str]
    parameters: int = 0
    quantization: str | None = None


@dataclass(slots=True, frozen=True)
class Deployment:
    """One node serving one model."""

    node_id: str
    region: str
    capabilities: frozenset[str]


@dataclass(slots=True, frozen=True)
class ModelEntry:
    """A model with its metadata and deployments."""

    model_id: str
    metadata: ModelMetadata
    deployments: list[Deployment]


def models_of(infos: Iterable[ModelInfo]) -> dict[str, frozenset[str]]:
    """model -> capabilities, from a heartbeat's models (a model listed twice: union)."""
    models: dict[str, frozenset[str]] = {}
    for info in infos:
        models[info.model] = models.get(info.model, frozenset()) | frozenset(info.capabilities)
    return models


def node_from_heartbeat(
    node_id: str, hb: Heartbeat, models: dict[str, frozenset[str]], now: float
) -> NodeInfo:
    """A new NodeInfo from a node's heartbeat (``models`` from ``models_of``, ``now`` the
    catalog clock's reading, in seconds)."""
    return NodeInfo(
        node_id=node_id,
        region=hb.region,
        models=models,
        capabilities=frozenset().union(*models.values()) if models else frozenset(),
        capacity=hb.capacity,
        in_flight=hb.in_flight,
        privacy=hb.privacy,
        cost=hb.cost,
        gpu=hb.gpu,
        labels=hb.labels,
        draining=hb.draining,
        incarnation=hb.incarnation,
        started_ms=hb.started_ms,
        interval_ms=hb.interval_ms,
        last_seen=now,
        queue_depth=hb.queue_depth,
        ttft_ms=hb.ttft_ms,
        tokens_per_s=hb.tokens_per_s,
    )
