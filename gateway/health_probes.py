"""Canaries of the health checker: which nodes are due a probe, and what a probe's
answer does (docs/routing.md draws the states).

``HealthProbes`` is a mixin of ``gateway.health.HealthChecker`` (it uses the checker's
config, clock, records and publish step). ``needs_probe()`` names the nodes that traffic
alone would not re-measure (unknown, unhealthy, over the latency limit, degraded or
idle), each at most once per ``check_interval_s``; a probe success puts an
out-of-service node back with the probe's latency as its only sample, a probe failure
is a failure. Pure: no I/O; the service owns the probe loop.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from gateway.nodehealth import HealthConfig, HealthRecord, HealthState

if TYPE_CHECKING:
    from gateway.clock import Clock


class HealthProbes:
    """The canary half of the health checker (mixed into ``HealthChecker``)."""

    config: HealthConfig
    monitoring: bool
    _clock: Clock
    _nodes: dict[str, HealthRecord]

    if TYPE_CHECKING:

        def _publish(self, node_id: str, st: HealthRecord) -> None:
            """The checker's: a new snapshot, listeners called."""

        def report_failure(self, node_id: str) -> None:
            """The checker's: a request to the node failed."""

    def report_probe_success(self, node_id: str, latency_s: float | None = None) -> None:
        """A probe (canary) answered in ``latency_s`` (its TTFT; None: not measured).

        It counts as a success. An UNHEALTHY node goes back to UNKNOWN first (counters
        reset); an UNHEALTHY node, one over ``latency_limit_s`` or one idle for
        ``idle_probe_s`` (no latency sample since) keeps the probe's latency as its only
        sample: it is back in service at once, and figures measured in another moment
        (a cold start, a burst) no longer keep an idle node out of the near-best band."""
        st = self._nodes.get(node_id)
        if st is None:
            return
        cfg = self.config
        now = self._clock()
        st.samples.expire(now)
        idle = cfg.idle_probe_s
        stale = bool(idle) and now - st.samples.lat.last_at >= idle
        out = st.status is HealthState.UNHEALTHY or self._over_limit(st) or stale
        if st.status is HealthState.UNHEALTHY:
            st.status = HealthState.UNKNOWN
            st.successes = 0
        st.failures = 0
        st.successes += 1
        st.last_outcome = now
        slow = False
        if latency_s is not None:
            if out:
                st.samples.lat.reset(now, latency_s * 1000.0)
            else:
                st.samples.lat.add(now, latency_s * 1000.0)
            slow = latency_s > cfg.degraded_ttft_s
        if slow:
            st.status = HealthState.DEGRADED
        elif st.successes >= cfg.recovery_threshold:
            st.status = HealthState.HEALTHY
        self._publish(node_id, st)

    def report_probe_failure(self, node_id: str) -> None:
        """A probe failed: counts as a failure."""
        self.report_failure(node_id)

    def note_probe(self, node_id: str) -> None:
        """Another gateway sent the node a canary now: not due here for ``check_interval_s``."""
        st = self._nodes.get(node_id)
        if st is not None:
            st.last_probe = self._clock()

    def _over_limit(self, st: HealthRecord) -> bool:
        lat = st.samples.lat
        return bool(lat.sorted) and lat.quantile(0.5) > self.config.latency_limit_s * 1e3

    def needs_probe(self) -> list[str]:
        """Nodes due for a canary, each at most once per ``check_interval_s``.

        Due: UNHEALTHY nodes; nodes whose p50 is over ``latency_limit_s``; UNKNOWN and
        DEGRADED nodes with no outcome for ``check_interval_s`` (traffic is not proving
        them; a new node first gets its share of real traffic, exploration's job); nodes
        with no latency sample for ``idle_probe_s`` (never measured, or idle), or none
        at all while they serve (non-streaming answers carry no first-token time), at most
        ``max_idle_probes`` of those per call, the longest idle first (an idle fleet of
        10,000 nodes costs a bounded trickle of canaries, not a burst). Also ages every
        node's samples out (call it periodically)."""
        cfg = self.config
        now = self._clock()
        interval, idle = cfg.check_interval_s, cfg.idle_probe_s
        due: list[str] = []
        idlers: list[tuple[float, str, HealthRecord]] = []
        for node_id, st in self._nodes.items():
            if st.samples.expire(now):
                self._publish(node_id, st)
            if now - st.last_probe < interval:
                continue
            status = st.status
            if (
                status is HealthState.UNHEALTHY
                or self._over_limit(st)
                or (status is not HealthState.HEALTHY and now - st.last_outcome >= interval)
            ):
                st.last_probe = now
                due.append(node_id)
            elif idle:
                since = max(st.samples.lat.last_at, st.registered)
                if st.successes and not len(st.samples.lat):
                    since = -math.inf  # serving, never timed (non-streaming answers): now
                if now - since >= idle:
                    idlers.append((since, node_id, st))
        if len(idlers) > cfg.max_idle_probes:
            idlers = heapq.nsmallest(cfg.max_idle_probes, idlers, key=_since)
        for _, node_id, st in idlers:
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


def _since(idler: tuple[float, str, HealthRecord]) -> float:
    return idler[0]
