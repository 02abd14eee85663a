"""Gateway counters: requests, outcomes, tokens, streams, latency, per node and tenant.

Memory is bounded: latency percentiles come from a sliding window, and at most
``max_tenants`` tenants (``max_nodes`` nodes) are tracked by name; the rest are folded
into ``"_other"``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.clock import MONOTONIC, Clock
from gateway.health import percentile

OTHER = "_other"
"""Bucket for tenants/nodes beyond the tracking cap."""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent copy of the counters (latencies in integer milliseconds)."""

    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    total_tokens: int = 0
    active_streams: int = 0
    avg_latency_ms: int = 0
    """Integer mean of successful latencies (0 when none), as the reference."""
    p50_latency_ms: int = 0
    p99_latency_ms: int = 0
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)
    per_tenant: dict[str, dict[str, int]] = field(default_factory=dict)
    uptime_s: float = 0.0


def _counters() -> dict[str, int]:
    return {"requests": 0, "successes": 0, "failures": 0, "tokens": 0}


class GatewayStats:
    """Counters of one gateway (single-threaded; the service calls it from its loop)."""

    def __init__(
        self,
        clock: Clock = MONOTONIC,
        window: int = 1024,
        max_tenants: int = 10_000,
        max_nodes: int = 100_000,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self.total_requests = 0
        self.successful_requests = 0
        self.failed_requests = 0
        self.total_tokens = 0
        self.active_streams = 0
        self._latency_ms_sum = 0
        self._window: deque[float] = deque(maxlen=window)
        self._max_tenants = max_tenants
        self._max_nodes = max_nodes
        self._tenants: dict[str, dict[str, int]] = {}
        self._nodes: dict[str, dict[str, int]] = {}

    @staticmethod
    def _bucket(table: dict[str, dict[str, int]], key: str, cap: int) -> dict[str, int]:
        row = table.get(key)
        if row is None:
            if len(table) >= cap:
                key = OTHER
                row = table.get(OTHER)
            if row is None:
                row = table[key] = _counters()
        return row

    def record_request(self, tenant_id: str | None = None) -> None:
        """A request arrived."""
        self.total_requests += 1
        if tenant_id is not None:
            self._bucket(self._tenants, tenant_id, self._max_tenants)["requests"] += 1

    def record_success(
        self,
        latency_s: float,
        tokens: int = 0,
        node_id: str | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """A request succeeded after ``latency_s`` seconds with ``tokens`` tokens."""
        self.successful_requests += 1
        self.total_tokens += tokens
        ms = latency_s * 1000.0
        self._latency_ms_sum += int(ms)
        self._window.append(ms)
        for table, key, cap in (
            (self._nodes, node_id, self._max_nodes),
            (self._tenants, tenant_id, self._max_tenants),
        ):
            if key is not None:
                row = self._bucket(table, key, cap)
                row["successes"] += 1
                row["tokens"] += tokens

    def record_failure(self, node_id: str | None = None, tenant_id: str | None = None) -> None:
        """A request failed (finally, after any retries)."""
        self.failed_requests += 1
        if node_id is not None:
            self._bucket(self._nodes, node_id, self._max_nodes)["failures"] += 1
        if tenant_id is not None:
            self._bucket(self._tenants, tenant_id, self._max_tenants)["failures"] += 1

    def record_dispatch(self, node_id: str) -> None:
        """A dispatch was sent to a node (counts node requests)."""
        self._bucket(self._nodes, node_id, self._max_nodes)["requests"] += 1

    def stream_started(self) -> None:
        """A stream opened."""
        self.active_streams += 1

    def stream_ended(self) -> None:
        """A stream closed, whatever the outcome (never below zero)."""
        self.active_streams = max(0, self.active_streams - 1)

    def snapshot(self) -> StatsSnapshot:
        """A copy of every counter."""
        ordered = sorted(self._window)
        ok = self.successful_requests
        return StatsSnapshot(
            total_requests=self.total_requests,
            successful_requests=ok,
            failed_requests=self.failed_requests,
            total_tokens=self.total_tokens,
            active_streams=self.active_streams,
            avg_latency_ms=self._latency_ms_sum // ok if ok else 0,
            p50_latency_ms=int(percentile(ordered, 0.50)),
            p99_latency_ms=int(percentile(ordered, 0.99)),
            per_node={k: dict(v) for k, v in self._nodes.items()},
            per_tenant={k: dict(v) for k, v in self._tenants.items()},
            uptime_s=self._clock() - self._started,
        )
