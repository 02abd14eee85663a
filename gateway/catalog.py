"""The model catalog: which node serves which model and capability, kept live by heartbeats.

Two ways in: the reference API (``register``/``deregister``, static deployments that never
expire) and ``apply_heartbeat`` (the live federation: nodes announce themselves, an older
incarnation is ignored, silent nodes expire). Indexes by capability and by
(capability, model) are maintained incrementally; listeners learn about every change.

A node's silence is measured on a *listening* clock: the catalog's clock less the time
the gateway itself could not listen (``stalled``: its event loop was blocked, so the
heartbeats that came meanwhile wait unread in the connection's buffer). A gateway that
stalls for three heartbeat intervals does not drop every live node it has not yet read.

The reference API's model view (``register``, ``get``, ...) is the ``ModelRegistry`` mixin
of gateway/catalog_models.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.catalog_models import ModelRegistry
from gateway.clock import MONOTONIC, Clock
from gateway.nodeinfo import (
    STATIC_CAPACITY,
    CatalogEvent,
    CatalogListener,
    Deployment,
    HeartbeatOutcome,
    ModelEntry,
    ModelMetadata,
    NodeInfo,
    apply_engine,
    models_of,
    node_from_heartbeat,
    note_in_flight,
    rotate_peaks,
)
from shared.messages import Heartbeat, ModelInfo

__all__ = [
    "STATIC_CAPACITY",
    "CatalogEvent",
    "CatalogListener",
    "Deployment",
    "HeartbeatOutcome",
    "ModelCatalog",
    "ModelEntry",
    "ModelMetadata",
    "NodeInfo",
]

_RETIRED_MAX = 4096


class ModelCatalog(ModelRegistry):
    """In-memory catalog of nodes, models and capabilities with incremental indexes."""

    def __init__(
        self,
        clock: Clock = MONOTONIC,
        expiry_intervals: int = 3,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        """Epoch seconds: the age of a heartbeat's engine signals (``measured_at``)."""
        self._expiry_intervals = expiry_intervals
        self._nodes: dict[str, NodeInfo] = {}
        self._raw_models: dict[str, tuple[ModelInfo, ...]] = {}
        self._by_cap: dict[str, dict[str, NodeInfo]] = {}
        self._by_cap_model: dict[tuple[str, str], dict[str, NodeInfo]] = {}
        self._by_model: dict[str, dict[str, NodeInfo]] = {}
        self._retired: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._listeners: list[CatalogListener] = []
        self._seq = 0
        self._dispatches = 0
        self.deaf_s = 0.0
        """Seconds this gateway could not listen, in all (``stalled``)."""

    # -- listeners ----------------------------------------------------------------

    def add_listener(self, listener: CatalogListener) -> None:
        """Call ``listener(event, node)`` after every change."""
        self._listeners.append(listener)

    def _notify(self, event: CatalogEvent, node: NodeInfo) -> None:
        for listener in self._listeners:
            listener(event, node)

    # -- index maintenance --------------------------------------------------------

    def _index(self, node: NodeInfo) -> None:
        nid = node.node_id
        for model, caps in node.models.items():
            self._by_model.setdefault(model, {})[nid] = node
            for cap in caps:
                self._by_cap_model.setdefault((cap, model), {})[nid] = node
        for cap in node.capabilities:
            self._by_cap.setdefault(cap, {})[nid] = node

    def _unindex(self, node: NodeInfo) -> None:
        nid = node.node_id
        for model, caps in node.models.items():
            _discard(self._by_model, model, nid)
            for cap in caps:
                _discard(self._by_cap_model, (cap, model), nid)
        for cap in node.capabilities:
            _discard(self._by_cap, cap, nid)

    def _add(self, node: NodeInfo) -> None:
        self._seq += 1
        node.seq = self._seq
        self._nodes[node.node_id] = node
        self._index(node)
        self._notify(CatalogEvent.ADDED, node)

    def _drop(self, node: NodeInfo) -> None:
        self._unindex(node)
        del self._nodes[node.node_id]
        self._raw_models.pop(node.node_id, None)
        self._notify(CatalogEvent.REMOVED, node)

    def _set_models(self, node: NodeInfo, models: dict[str, frozenset[str]]) -> None:
        self._unindex(node)
        node.models = models
        node.capabilities = frozenset().union(*models.values()) if models else frozenset()
        self._index(node)

    def _retire(self, node_id: str, incarnation: str) -> None:
        if not incarnation:
            return
        self._retired[(node_id, incarnation)] = None
        if len(self._retired) > _RETIRED_MAX:
            self._retired.popitem(last=False)

    # -- live federation ----------------------------------------------------------

    def apply_heartbeat(self, node_id: str, hb: Heartbeat) -> HeartbeatOutcome:
        """Fold one heartbeat into the catalog (node_id comes from the subject)."""
        node = self._nodes.get(node_id)
        if node is None:
            if (node_id, hb.incarnation) in self._retired:
                return HeartbeatOutcome.STALE
            self._add(self._from_heartbeat(node_id, hb))
            return HeartbeatOutcome.NEW
        if node.incarnation != hb.incarnation:
            if (node_id, hb.incarnation) in self._retired or hb.started_ms < node.started_ms:
                return HeartbeatOutcome.STALE
            self._retire(node_id, node.incarnation)
            self._drop(node)
            self._add(self._from_heartbeat(node_id, hb))
            return HeartbeatOutcome.REPLACED
        node.last_seen = now = self._clock()
        node.heard = now - self.deaf_s
        node.capacity = hb.capacity
        counted = note_in_flight(node, hb.in_flight)
        node.privacy = hb.privacy
        node.labels = hb.labels
        node.draining = hb.draining
        node.interval_ms = hb.interval_ms
        node.queue_depth = hb.queue_depth
        node.ttft_ms = hb.ttft_ms
        apply_engine(node, hb.engine, self._wall() * 1000.0, counted)
        moved = False
        if hb.models is not self._raw_models.get(node_id) and hb.models != self._raw_models.get(
            node_id
        ):
            self._raw_models[node_id] = hb.models
            self._set_models(node, models_of(hb.models))
            moved = True
        if hb.region != node.region:
            node.region = hb.region
            moved = True
        changed = hb.cost != node.cost or hb.gpu != node.gpu or hb.tokens_per_s != node.tokens_per_s
        node.cost, node.gpu, node.tokens_per_s = hb.cost, hb.gpu, hb.tokens_per_s
        if moved:
            self._notify(CatalogEvent.MOVED, node)
        elif changed:
            self._notify(CatalogEvent.CHANGED, node)
        return HeartbeatOutcome.UPDATED

    def _from_heartbeat(self, node_id: str, hb: Heartbeat) -> NodeInfo:
        models = models_of(hb.models)
        self._raw_models[node_id] = hb.models
        now = self._clock()
        node = node_from_heartbeat(node_id, hb, models, now, self._wall() * 1000.0)
        node.heard = now - self.deaf_s
        return node

    def remove_node(self, node_id: str, incarnation: str | None = None) -> bool:
        """A leave: drop the node unless ``incarnation`` names another one; True if dropped."""
        node = self._nodes.get(node_id)
        if incarnation is not None:
            self._retire(node_id, incarnation)
            if node is not None and node.incarnation != incarnation:
                return False
        if node is None:
            return False
        self._retire(node_id, node.incarnation)
        self._drop(node)
        return True

    def stalled(self, seconds: float) -> None:
        """This gateway could not listen for ``seconds`` (its event loop was blocked):
        that time is no node's silence (the listening clock stands still over it)."""
        if seconds > 0:
            self.deaf_s += seconds

    def expire(self) -> list[str]:
        """Drop heartbeat nodes silent for expiry_intervals x interval_ms of listening
        time (``stalled``); their ids."""
        now = self._clock() - self.deaf_s
        gone = [
            n
            for n in self._nodes.values()
            if n.incarnation and now - n.heard > self._expiry_intervals * n.interval_ms / 1000.0
        ]
        for node in gone:
            self._drop(node)
        return [n.node_id for n in gone]

    def node(self, node_id: str) -> NodeInfo | None:
        """The node, or None."""
        return self._nodes.get(node_id)

    def touch(self, node_id: str) -> bool:
        """A heartbeat identical to the node's last one: its liveness is refreshed, and
        its engine signals (the same ``measured_at``) dropped once stale."""
        node = self._nodes.get(node_id)
        if node is None:
            return False
        node.last_seen = now = self._clock()
        node.heard = now - self.deaf_s
        rotate_peaks(node)
        if node.engine is not None:
            apply_engine(node, node.engine, self._wall() * 1000.0)
        return True

    def nodes(self) -> list[NodeInfo]:
        """Every node, in insertion order."""
        return list(self._nodes.values())

    def nodes_for(self, capability: str, model: str | None = None) -> list[NodeInfo]:
        """Nodes serving ``capability`` (and ``model`` when given), from the index."""
        index = (
            self._by_cap.get(capability)
            if model is None
            else self._by_cap_model.get((capability, model))
        )
        return list(index.values()) if index else []

    def add_in_flight(self, node_id: str, delta: int) -> None:
        """Count this gateway's own dispatches to a node (never below zero); a positive
        ``delta`` also stamps ``NodeInfo.last_dispatch`` and raises ``peak_in_flight``."""
        node = self._nodes.get(node_id)
        if node is not None:
            local = node.local_in_flight + delta
            node.local_in_flight = local if local > 0 else 0
            if delta > 0:
                self._dispatches += 1
                node.last_dispatch = self._dispatches
                if local > node.peak_in_flight:
                    node.peak_in_flight = local

    def __len__(self) -> int:
        return len(self._nodes)


def _discard(index: dict[Any, dict[str, NodeInfo]], key: Any, node_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(node_id, None)
        if not bucket:
            del index[key]
