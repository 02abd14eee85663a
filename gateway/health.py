"""Passive health tracking of nodes: per-unit-of-work latency, decay, and canary scheduling.

States and transitions (thresholds from ``HealthConfig``; docs/routing.md draws them)::

    register                                   -> UNKNOWN, counters 0
    success judged slow                        -> DEGRADED (whatever the count)
    success, consecutive_successes >= recovery -> HEALTHY
    success otherwise                          -> unchanged (one success keeps UNKNOWN)
    failure, consecutive_failures >= threshold -> UNHEALTHY
    failure otherwise                          -> DEGRADED (the first failure demotes)
    probe success                              -> a success; UNHEALTHY -> UNKNOWN first
    probe failure                              -> a failure

A success is judged per unit of work: its time to first token (``ttft_s``) against
``degraded_ttft_s`` and its time per output token against ``degraded_tpot_s`` and against
``slow_factor`` x the node's own median (when that is ``slow_min_excess_s`` late in
all: not a scheduler hiccup). A success reported with neither ``ttft_s`` nor
``tokens`` is a whole request (an RPC such as an embedding) and is judged as the
reference does: slower than ``degraded_latency_s`` is slow.

Nothing excludes a node for good: samples age out (``sample_max_age_s``), and
``needs_probe()`` names the nodes that traffic alone would not re-measure (unknown,
unhealthy, over the latency limit, degraded or idle); a probe success puts an
out-of-service node back with the probe's latency as its only sample.

Reports about unregistered nodes are silent no-ops. Each change replaces the node's
immutable ``NodeHealth`` snapshot, so readers never see a half-updated record. The
states, thresholds, snapshot and per-node record are in gateway/nodehealth.py (the
first three re-exported here); the canaries (``needs_probe``, probe reports) are the
``HealthProbes`` mixin of gateway/health_probes.py.
"""

from __future__ import annotations

from gateway.clock import MONOTONIC, Clock
from gateway.health_probes import HealthProbes
from gateway.latency import percentile
from gateway.nodehealth import HealthConfig, HealthListener, HealthRecord, HealthState, NodeHealth
from shared.errors import NodeUnreachable

__all__ = [
    "HealthChecker",
    "HealthConfig",
    "HealthListener",
    "HealthState",
    "NodeHealth",
    "percentile",
]


class HealthChecker(HealthProbes):
    """Tracks every registered node's health from reported outcomes and probes."""

    def __init__(self, config: HealthConfig | None = None, clock: Clock = MONOTONIC) -> None:
        self.config = config or HealthConfig()
        self._clock = clock
        self._nodes: dict[str, HealthRecord] = {}
        self._listeners: list[HealthListener] = []
        self._dirty: set[str] = set()
        self.monitoring = False

    def add_listener(self, listener: HealthListener) -> None:
        """Call ``listener(node_id)`` after every change."""
        self._listeners.append(listener)

    def _publish(self, node_id: str, st: HealthRecord) -> None:
        self._dirty.discard(node_id)
        now = st.published_at = self._clock()
        lat, tpot = st.samples.lat, st.samples.tpot
        st.snapshot = NodeHealth(
            node_id=node_id,
            status=st.status,
            latency_p50_ms=lat.quantile(0.50),
            latency_p90_ms=lat.quantile(0.90),
            latency_p99_ms=lat.quantile(0.99),
            tokens_per_s=st.samples.rate.per_s,
            consecutive_failures=st.failures,
            consecutive_successes=st.successes,
            last_check=now,
            samples=len(lat),
            tpot_p50_ms=tpot.quantile(0.50),
            tpot_samples=len(tpot),
            measured=len(lat) > 0,
        )
        for listener in self._listeners:
            listener(node_id)

    def register_node(self, node_id: str) -> None:
        """(Re)register a node: fresh UNKNOWN state."""
        now = self._clock()
        snap = NodeHealth(
            node_id=node_id, status=HealthState.UNKNOWN, last_check=now, measured=False
        )
        self._nodes[node_id] = HealthRecord(snap, self.config, now)
        for listener in self._listeners:
            listener(node_id)

    def deregister_node(self, node_id: str) -> None:
        """Forget a node (unknown ids are fine)."""
        self._dirty.discard(node_id)
        if self._nodes.pop(node_id, None) is not None:
            for listener in self._listeners:
                listener(node_id)

    def is_registered(self, node_id: str) -> bool:
        """True if the node is tracked."""
        return node_id in self._nodes

    def report_success(
        self, node_id: str, latency_s: float, tokens: int = 0, *, ttft_s: float | None = None
    ) -> None:
        """A request succeeded: ``latency_s`` the whole attempt, ``tokens`` output tokens,
        ``ttft_s`` the time to its first chunk (streams; None otherwise).

        With neither ``ttft_s`` nor ``tokens`` it is judged as one whole request (the
        reference rule); otherwise per unit of work: TTFT, and time per output token
        ((latency - ttft) / tokens, or latency / tokens without a TTFT)."""
        st = self._nodes.get(node_id)
        if st is None:
            return
        cfg = self.config
        now = self._clock()
        st.samples.expire(now)
        st.failures = 0
        st.successes += 1
        st.last_outcome = now
        if ttft_s is None and tokens <= 0:
            st.samples.lat.add(now, latency_s * 1000.0)
            slow = latency_s > cfg.degraded_latency_s
        else:
            slow = False
            if ttft_s is not None:
                st.samples.lat.add(now, ttft_s * 1000.0)
                slow = ttft_s > cfg.degraded_ttft_s
            if tokens > 0:
                work_s = latency_s - ttft_s if ttft_s is not None else latency_s
                tpot_ms = max(work_s, 0.0) * 1000.0 / tokens
                slow = self._slow_tpot(st, tpot_ms, tokens) or slow
                st.samples.tpot.add(now, tpot_ms)
        if tokens > 0 and latency_s > 0:
            st.samples.rate.add(now, latency_s, tokens)
        before = st.status
        if slow:
            st.status = HealthState.DEGRADED
        elif st.successes >= cfg.recovery_threshold:
            st.status = HealthState.HEALTHY
        interval = cfg.publish_interval_s
        if interval and st.status is before and now - st.published_at < interval:
            self._dirty.add(node_id)  # same status: the figures follow within interval
            return
        self._publish(node_id, st)

    def _slow_tpot(self, st: HealthRecord, tpot_ms: float, tokens: int) -> bool:
        """Over ``degraded_tpot_s``; or over ``slow_factor`` x the node's own median with
        ``slow_min_samples`` earlier samples, by ``slow_min_excess_s`` in all at least."""
        cfg = self.config
        if tpot_ms > cfg.degraded_tpot_s * 1000.0:
            return True
        if not cfg.slow_factor or len(st.samples.tpot) < cfg.slow_min_samples:
            return False
        median = st.samples.tpot.quantile(0.5)
        return (
            median > 0
            and tpot_ms > cfg.slow_factor * median
            and (tpot_ms - median) * tokens > cfg.slow_min_excess_s * 1000.0
        )

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
        st.last_outcome = self._clock()
        if st.failures >= self.config.failure_threshold:
            st.status = HealthState.UNHEALTHY
        else:
            st.status = HealthState.DEGRADED
        self._publish(node_id, st)

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
