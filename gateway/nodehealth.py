"""A node's health as the gateway records it: states, thresholds, snapshots.

``HealthState`` is the state of the machine drawn in gateway/health.py; ``HealthConfig``
its thresholds (times in seconds); ``NodeHealth`` the immutable snapshot readers get
(latencies and time per token in milliseconds, throughput in tokens per second).
``gateway.health`` (the ``HealthChecker``) re-exports them all. ``HealthRecord`` is the
checker's own mutable record of one node (counters, samples, probe times, snapshot).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.latency import NodeSamples


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
    """A whole-request success (no ttft_s, no tokens) slower than this is slow."""
    window: int = 128
    """Samples kept per node and per measure (latency, time per token, tokens/s)."""
    check_interval_s: float = 10.0
    """Minimum time between two probes of the same node."""
    probe_timeout_s: float = 5.0
    publish_interval_s: float = 0.0
    """Successes that leave the status unchanged notify listeners at most this often per
    node (0: every time); ``flush()`` sends what is pending."""
    degraded_ttft_s: float = 10.0
    """A first token later than this is slow (prompt length makes TTFT vary: lenient)."""
    degraded_tpot_s: float = 0.5
    """A time per output token above this is slow."""
    slow_factor: float = 8.0
    """A time per output token above this many times the node's own median is slow
    (0 disables the relative rule)."""
    slow_min_samples: int = 8
    """The relative rule needs at least this many earlier time-per-token samples."""
    slow_min_excess_s: float = 0.25
    """The relative rule also needs the answer to have taken this much longer in all
    than its tokens at the node's median would have: on a node answering in a fraction
    of a millisecond per token, a scheduler hiccup of a few milliseconds is 8 x its
    median, and marking it DEGRADED halved a fleet of two identical nodes (one got 5 of
    30 sequential requests, tests/integration/test_prefix_routing.py)."""
    sample_max_age_s: float = 120.0
    """Samples older than this leave the windows, except each window's newest (0: never)."""
    idle_probe_s: float = 15.0
    """A node with no latency sample for this long is due for a probe (0: never); the
    probe's latency replaces its older samples. 60 s left a node whose few samples came
    from a cold start with 7-18 % of the traffic of two identical peers for minutes
    (bench/peers, docs/routing.md "Canaries")."""
    max_idle_probes: int = 16
    """Idle nodes probed per ``needs_probe()`` call at most (the longest idle first)."""
    latency_limit_s: float = 5.0
    """p50 above which routing excludes a node (keep equal to LatencyPolicy.max_latency_s):
    such a node is probed, and a probe success replaces its latency samples."""


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """Immutable snapshot of a node's health (latencies in milliseconds)."""

    node_id: str
    status: HealthState
    latency_p50_ms: float = 0.0
    """Percentiles of the latency samples: time to first token for streams and probes,
    the whole time for requests reported without tokens."""
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0
    tokens_per_s: float | None = None
    """Measured tokens per second over the window; None until a report carries tokens."""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: float = 0.0
    samples: int = 0
    """Latency samples in the window (0 = latency never measured)."""
    tpot_p50_ms: float = 0.0
    """Median time per output token (ms); 0 until a report carries tokens."""
    tpot_samples: int = 0
    measured: bool = True
    """False while the health checker holds no latency sample of the node (new, or
    serving only non-streaming answers, which carry no first-token time): its latency
    percentiles are then 0, not a figure, and the latency policy scores it as a node it
    does not know (``UNMEASURED_MS``), not as the fastest."""


HealthListener = Callable[[str], None]
"""Called with the node id after every change of its health."""


class HealthRecord:
    """One node's health as ``HealthChecker`` keeps it (gateway/health.py)."""

    __slots__ = (
        "failures",
        "last_outcome",
        "last_probe",
        "published_at",
        "registered",
        "samples",
        "snapshot",
        "status",
        "successes",
    )

    def __init__(self, snapshot: NodeHealth, config: HealthConfig, now: float) -> None:
        self.snapshot = snapshot
        self.status = snapshot.status
        self.failures = 0
        self.successes = 0
        self.samples = NodeSamples(config.window, config.sample_max_age_s)
        self.last_probe = -math.inf
        self.last_outcome = now
        self.registered = now
        self.published_at = -math.inf
