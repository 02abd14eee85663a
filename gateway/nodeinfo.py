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

from shared.messages import EngineSignals, Heartbeat, ModelInfo, Privacy

STATIC_CAPACITY = 1_000_000
"""Capacity given to nodes registered through the reference API (effectively unbounded)."""
ENGINE_STALE_INTERVALS = 3
"""Engine signals measured more than this many heartbeat intervals ago are ignored."""
KV_KNEE = 0.8
"""KV-cache use above which the engine load is penalised (the engine starts evicting
cached prefixes, then preempting running requests)."""
KV_PENALTY = 0.5
"""Load added when the KV cache is full (linear from ``KV_KNEE``): a full cache counts as
half a node's capacity more queue."""


def engine_load(engine: EngineSignals, capacity: int, counted: int = 0) -> float:
    """What an engine reports beyond the requests the gateway counts, as a fraction of
    the node's capacity: ``(running + waiting - counted) / capacity`` (at least 0), plus
    ``KV_PENALTY * (kv - KV_KNEE) / (1 - KV_KNEE)`` when the KV-cache use ``kv`` is above
    ``KV_KNEE``. ``counted`` is the node's in-flight count that ``local_in_flight +
    remote_in_flight`` already holds (its heartbeat's, or this gateway's peak when
    higher): what is left is the engine's other callers' (clients that bypass fedgate).
    ``NodeInfo.load`` adds it.

    Until 2026-12 the engine's count was a floor for the load (``max``): a snapshot up to
    an interval old of requests this gateway counts itself, and more freshly. A node that
    had just finished its batch still read it, and identical nodes lost every
    power-of-two comparison in turn (tests/integration/test_spread.py saw 184/16 with the
    worker's own counters)."""
    beyond = engine.running + engine.waiting - counted
    load = beyond / capacity if beyond > 0 else 0.0
    kv = engine.kv_cache_usage
    if kv is not None and kv > KV_KNEE:
        load += KV_PENALTY * (kv - KV_KNEE) / (1.0 - KV_KNEE)
    return load


def apply_engine(
    node: NodeInfo, engine: EngineSignals | None, wall_ms: float, counted: int | None = None
) -> None:
    """Keep ``engine`` on ``node`` when fresh (measured within ``ENGINE_STALE_INTERVALS``
    heartbeat intervals of ``wall_ms``, the gateway's wall clock in epoch milliseconds),
    else forget the node's engine signals: ``engine_load`` 0 and ``engine`` None.
    ``counted``: see ``engine_load`` (None: the same signals again, the load kept)."""
    if engine is None or wall_ms - engine.measured_at > ENGINE_STALE_INTERVALS * node.interval_ms:
        node.engine, node.engine_load = None, 0.0
    elif counted is not None:
        node.engine, node.engine_load = engine, engine_load(engine, node.capacity, counted)


@dataclass(slots=True, eq=False)
class NodeInfo:
    """What the gateway knows about one node (from its last heartbeat or a registration)."""

    node_id: str
    region: str = "default"
    models: dict[str, frozenset[str]] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    capacity: int = STATIC_CAPACITY
    in_flight: int = 0
    """Requests in flight on the node at its last heartbeat (every gateway's)."""
    local_in_flight: int = 0
    """This gateway's own dispatches in flight (exact, now)."""
    remote_in_flight: int = 0
    """The other gateways' part at the last heartbeat: ``in_flight`` less the most this
    gateway had in flight there over the last two heartbeat intervals (``peak_in_flight``,
    ``prior_peak``), at least 0 (``note_in_flight``). ``load`` adds it to the exact local
    count instead of taking the larger of a heartbeat up to an interval old and the count
    now: with one gateway and 32 streams, a node that had just finished its batch still
    read 15 of 64 from its last heartbeat, and three identical nodes held 16 / 15 / 1
    requests in turn (bench/peers). Less the count when the heartbeat is read (until
    2026-12), a heartbeat sent before a batch finished and read after its answers showed
    the batch as another gateway's: 8 phantom requests on one of two identical nodes for a
    heartbeat interval, 181 / 19 of 200 requests at concurrency 16."""
    peak_in_flight: int = 0
    """The most of this gateway's dispatches in flight there since the last heartbeat."""
    prior_peak: int = 0
    """``peak_in_flight`` of the interval before."""
    privacy: Privacy = Privacy.INTERNAL
    cost: float = 0.5
    gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    incarnation: str = ""
    started_ms: int = 0
    interval_ms: int = 1000
    last_seen: float = 0.0
    heard: float = 0.0
    """When the last heartbeat came on the catalog's listening clock (its clock less the
    time this gateway could not listen: ``ModelCatalog.stalled``); expiry measures a
    node's silence from it."""
    queue_depth: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    seq: int = 0
    """Catalog insertion number: the stable tie-breaker of every ranking."""
    last_dispatch: int = 0
    """When this gateway last dispatched to the node, as a count of its dispatches (0:
    never): POWER_OF_TWO gives an equal-load pair to the least recently used."""
    engine: EngineSignals | None = None
    """The node's latest fresh engine signals (None: none, or stale; ``apply_engine``)."""
    engine_load: float = 0.0
    """``engine_load`` of the fresh signals (the engine's other callers' part and KV-cache
    pressure), else 0."""

    @property
    def load(self) -> float:
        """(own dispatches + the others' at the last heartbeat) / capacity, plus the
        engine's part beyond them (``engine_load``); can exceed 1.0."""
        return (self.local_in_flight + self.remote_in_flight) / self.capacity + self.engine_load

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


def note_in_flight(node: NodeInfo, in_flight: int, heartbeat: bool = True) -> int:
    """A heartbeat's in-flight count: ``in_flight`` and ``remote_in_flight`` (see there),
    against the most this gateway had there since the heartbeat before the last one (the
    node counted while this gateway's answers were on their way). ``heartbeat`` False:
    the same count again (this gateway's own changed), the peaks kept. Returns what the
    load now counts of the heartbeat (``in_flight``, or this gateway's peak if higher)."""
    node.in_flight = in_flight
    local = node.local_in_flight
    own = max(local, node.peak_in_flight, node.prior_peak)
    if heartbeat:
        rotate_peaks(node)
    remote = in_flight - own
    node.remote_in_flight = remote if remote > 0 else 0
    return own if own > in_flight else in_flight


def rotate_peaks(node: NodeInfo) -> None:
    """A heartbeat came: this gateway's peak starts again (``peak_in_flight``)."""
    node.prior_peak, node.peak_in_flight = node.peak_in_flight, node.local_in_flight


def node_from_heartbeat(
    node_id: str, hb: Heartbeat, models: dict[str, frozenset[str]], now: float, wall_ms: float
) -> NodeInfo:
    """A new NodeInfo from a node's heartbeat (``models`` from ``models_of``, ``now`` the
    catalog clock's reading, in seconds; ``wall_ms`` epoch milliseconds, for the engine
    signals' age)."""
    node = NodeInfo(
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
    apply_engine(node, hb.engine, wall_ms, note_in_flight(node, hb.in_flight))
    return node
