"""Passive health tracking of nodes, with real latency percentiles and probe scheduling.

Transitions (as the reference; thresholds from ``HealthConfig``)::

    success slower than degraded_latency_s        -> DEGRADED (whatever the count)
    success, consecutive_successes >= recovery (2) -> HEALTHY
    success otherwise                              -> unchanged (one success keeps UNKNOWN)
    failure, consecutive_failures >= threshold (3) -> UNHEALTHY
    failure otherwise                              -> DEGRADED (the first failure demotes)
    probe success on UNHEALTHY                     -> UNKNOWN, counters reset (gets traffic again)

Reports about unregistered nodes are silent no-ops. Each change replaces the node's
immutable ``NodeHealth`` snapshot, so readers never see a half-updated record.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.clock import MONOTONIC, Clock
from shared.errors import NodeUnreachable


class HealthState(enum.Enum):
    """Health of one node."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of the health state machine (times in seconds)."""

    failure_threshold: int = 3
    recovery_threshold: int = 2
    degraded_latency_s: float = 1.0
    window: int = 128
    """Latency samples kept per node for the percentiles."""
    check_interval_s: float = 10.0
    """Minimum time between two probes of the same node."""
    probe_timeout_s: float = 5.0
    publish_interval_s: float = 0.0
    """Successes that leave the status unchanged notify listeners at most this often per
    node (0: every time); ``flush()`` sends what is pending."""


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """Immutable snapshot of a node's health (latencies in milliseconds)."""

    node_id: str
    status: HealthState
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0
    tokens_per_s: float | None = None
    """Measured tokens per second over the window; None until a report carries tokens."""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: float = 0.0
    samples: int = 0
    """Latency samples in the window (0 = latency never measured)."""


HealthListener = Callable[[str], None]
"""Called with the node id after every change of its health."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class _State:
    __slots__ = (
        "failures",
        "last_probe",
        "lat",
        "published_at",
        "snapshot",
        "sorted_lat",
        "status",
        "successes",
        "tok",
        "tok_lat_sum",
        "tok_sum",
    )

    def __init__(self, snapshot: NodeHealth, window: int) -> None:
        self.snapshot = snapshot
        self.status = snapshot.status
        self.failures = 0
        self.successes = 0
        self.lat: deque[float] = deque(maxlen=window)
        self.sorted_lat: list[float] = []
        self.tok: deque[tuple[float, int]] = deque(maxlen=window)
        self.tok_sum = 0
        self.tok_lat_sum = 0.0
        self.last_probe = -math.inf
        self.published_at = -math.inf


class HealthChecker:
    """Tracks every registered node's health from reported outcomes and probes."""

    def __init__(self, config: HealthConfig | None = None, clock: Clock = MONOTONIC) -> None:
        self.config = config or HealthConfig()
        self._clock = clock
        self._nodes: dict[str, _State] = {}
        self._listeners: list[HealthListener] = []
        self._dirty: set[str] = set()
        self.monitoring = False

    def add_listener(self, listener: HealthListener) -> None:
        """Call ``listener(node_id)`` after every change."""
        self._listeners.append(listener)

    def _publish(self, node_id: str, st: _State) -> None:
        self._dirty.discard(node_id)
        st.published_at = self._clock()
        lat = st.sorted_lat
        st.snapshot = NodeHealth(
            node_id=node_id,
            status=st.status,
            latency_p50_ms=percentile(lat, 0.50),
            latency_p90_ms=percentile(lat, 0.90),
            latency_p99_ms=percentile(lat, 0.99),
            tokens_per_s=st.tok_sum / st.tok_lat_sum if st.tok_lat_sum > 0 else None,
            consecutive_failures=st.failures,
            consecutive_successes=st.successes,
            last_check=self._clock(),
            samples=len(lat),
        )
        for listener in self._listeners:
            listener(node_id)

    def register_node(self, node_id: str) -> None:
        """(Re)register a node: fresh UNKNOWN state."""
        snap = NodeHealth(node_id=node_id, status=HealthState.UNKNOWN, last_check=self._clock())
        st = _State(snap, self.config.window)
        self._nodes[node_id] = st
        for listener in self._listeners:
            listener(node_id)

    def deregister_node(self, node_id: str) -> None:
        """Forget a node (unknown ids are fine)."""
        if self._nodes.pop(node_id, None) is not None:
            for listener in self._listeners:
                listener(node_id)

    def is_registered(self, node_id: str) -> bool:
        """True if the node is tracked."""
        return node_id in self._nodes

    def report_success(self, node_id: str, latency_s: float, tokens: int = 0) -> None:
        """A request succeeded in ``latency_s`` seconds producing ``tokens`` tokens."""
        st = self._nodes.get(node_id)
        if st is None:
            return
        st.failures = 0
        st.successes += 1
        ms = latency_s * 1000.0
        if len(st.lat) == st.lat.maxlen:
            old = st.lat[0]
            del st.sorted_lat[bisect.bisect_left(st.sorted_lat, old)]
        st.lat.append(ms)
        bisect.insort(st.sorted_lat, ms)
        if tokens > 0 and latency_s > 0:
            if len(st.tok) == st.tok.maxlen:
                old_lat, old_tok = st.tok[0]
                st.tok_lat_sum -= old_lat
                st.tok_sum -= old_tok
            st.tok.append((latency_s, tokens))
            st.tok_lat_sum += latency_s
            st.tok_sum += tokens
        before = st.status
        if latency_s > self.config.degraded_latency_s:
            st.status = HealthState.DEGRADED
        elif st.successes >= self.config.recovery_threshold:
            st.status = HealthState.HEALTHY
        interval = self.config.publish_interval_s
        if interval and st.status is before and self._clock() - st.published_at < interval:
            self._dirty.add(node_id)  # same status: the figures follow within interval
            return
        self._publish(node_id, st)

    def flush(self) -> None:
        """Publish every node whose figures changed since its last publish."""
        for node_id in list(self._dirty):
            st = self._nodes.get(node_id)
            if st is None:
                self._dirty.discard(node_id)
            else:
                self._publish(node_id, st)

    def report_failure(self, node_id: str) -> None:
        """A request to the node failed."""
        st = self._nodes.get(node_id)
        if st is None:
            return
        st.successes = 0
        st.failures += 1
        if st.failures >= self.config.failure_threshold:
            st.status = HealthState.UNHEALTHY
        else:
            st.status = HealthState.DEGRADED
        self._publish(node_id, st)

    def report_probe_success(self, node_id: str) -> None:
        """A probe (ping) answered: an UNHEALTHY node goes back to UNKNOWN, counters reset."""
        st = self._nodes.get(node_id)
        if st is None:
            return
        if st.status is HealthState.UNHEALTHY:
            st.status = HealthState.UNKNOWN
            st.failures = 0
            st.successes = 0
        self._publish(node_id, st)

    def report_probe_failure(self, node_id: str) -> None:
        """A probe failed: counts as a failure."""
        self.report_failure(node_id)

    def get_cached_health(self, node_id: str) -> NodeHealth | None:
        """The node's current snapshot, or None if unregistered."""
        st = self._nodes.get(node_id)
        return st.snapshot if st is not None else None

    def check_node(self, node_id: str) -> NodeHealth:
        """The cached snapshot, or raise NodeUnreachable."""
        st = self._nodes.get(node_id)
        if st is None:
            raise NodeUnreachable(node_id)
        return st.snapshot

    def all_statuses(self) -> list[NodeHealth]:
        """Every node's snapshot, in registration order."""
        return [st.snapshot for st in self._nodes.values()]

    def healthy_count(self) -> int:
        """Nodes currently HEALTHY."""
        return sum(1 for st in self._nodes.values() if st.status is HealthState.HEALTHY)

    def total_count(self) -> int:
        """Registered nodes."""
        return len(self._nodes)

    def needs_probe(self) -> list[str]:
        """UNKNOWN/UNHEALTHY nodes due for a probe (each at most once per check_interval_s)."""
        now = self._clock()
        due: list[str] = []
        for node_id, st in self._nodes.items():
            if st.status in (HealthState.UNKNOWN, HealthState.UNHEALTHY) and (
                now - st.last_probe >= self.config.check_interval_s
            ):
                st.last_probe = now
                due.append(node_id)
        return due

    def start_monitoring(self) -> None:
        """Set the monitoring flag (the service owns the probe loop)."""
        self.monitoring = True

    def stop_monitoring(self) -> None:
        """Clear the monitoring flag."""
        self.monitoring = False

    def is_monitoring(self) -> bool:
        """The monitoring flag."""
        return self.monitoring
