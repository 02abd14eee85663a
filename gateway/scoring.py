"""The routing policy interface: what a policy is (``Policy``, ``PolicyKind``) and what it
scores (a ``Candidate``: one node for one request, with its inputs).

``build_candidate`` turns a node, its health and a request into a ``Candidate`` whose
``Scores`` are normalised inputs (0..1, higher is better): latency from the p50 (0 at
``LATENCY_HORIZON_MS``), throughput from tokens/s (1 at 1000), cost, locality, health
(``HEALTH_SCORES``), load (in-flight / capacity, or the engine's running + waiting over
capacity when higher) and gpu; ``cache`` and ``ttft_ms`` are the prefix stage's. The policies of
``gateway.policies`` read them. ``Policy.is_eligible`` answers (eligible, reason), ``OK``
when eligible. ``gateway.policies`` re-exports every name here.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable

import msgspec

from gateway.nodehealth import HealthState, NodeHealth
from gateway.nodeinfo import NodeInfo
from shared.messages import InferRequest

HEALTH_SCORES = {
    HealthState.HEALTHY: 1.0,
    HealthState.DEGRADED: 0.5,
    HealthState.UNKNOWN: 0.3,
    HealthState.UNHEALTHY: 0.0,
}
"""Health input score per state (as the reference router)."""

LATENCY_HORIZON_MS = 5000.0
"""p50 at which the latency input score reaches 0."""
UNMEASURED_MS = 1000
"""The p50 a node without a latency sample is scored with (``synthetic_health``'s)."""


def synthetic_health(node_id: str) -> NodeHealth:
    """What an unregistered node looks like: UNKNOWN, p50 1 s, p99 5 s, never measured."""
    return NodeHealth(
        node_id=node_id,
        status=HealthState.UNKNOWN,
        latency_p50_ms=float(UNMEASURED_MS),
        latency_p90_ms=5000.0,
        latency_p99_ms=5000.0,
        measured=False,
    )


class Scores(msgspec.Struct, gc=False):
    """Normalised inputs (0..1, higher is better) and the composite ``total``.

    Scores and Candidate are msgspec Structs, not dataclasses: one of each is built per
    route and per health report, and a Struct's __init__ (in C) costs a third."""

    latency: float = 0.5
    throughput: float = 0.5
    cost: float = 0.5
    locality: float = 0.5
    health: float = 1.0
    total: float = 0.5
    load: float = 0.5
    gpu: float = 0.5
    cache: float = 0.0
    """Fraction of the request's prompt blocks the node is believed to hold (0..1;
    filled by the prefix stage, gateway/affinity.py, only when it ran)."""
    ttft_ms: float = -1.0
    """Predicted time to first token, ms (gateway/prefix_cost.py); -1: not predicted."""


class Candidate(msgspec.Struct):
    """One node considered for a request, with its scores, eligibility and reason."""

    node: NodeInfo
    health: NodeHealth
    scores: Scores
    eligible: bool = True
    reason: str = ""
    """Why it was rejected ("" when eligible)."""
    contributions: dict[str, float] = msgspec.field(default_factory=dict)
    """Each policy's score (filled by ``Router.get_candidates`` only)."""

    @property
    def node_id(self) -> str:
        """The node's id."""
        return self.node.node_id

    @property
    def region(self) -> str:
        """The node's region."""
        return self.node.region

    @property
    def score(self) -> float:
        """The composite score (``scores.total``)."""
        return self.scores.total

    @property
    def latency_ms(self) -> float:
        """Estimated latency: the measured p50 in milliseconds."""
        return self.health.latency_p50_ms


_HEALTHY, _DEGRADED, _UNKNOWN = HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNKNOWN
"""Module globals: an Enum member read through its class costs a quarter microsecond."""


def build_candidate(node: NodeInfo, health: NodeHealth, request: InferRequest) -> Candidate:
    """Fill the normalised inputs of a candidate (total left at 0 for the policy)."""
    region = request.qos.region
    tps = health.tokens_per_s
    if tps is None:
        tps = node.tokens_per_s
    # the engine's part beyond the counted requests (gateway/nodeinfo.py)
    load = (node.local_in_flight + node.remote_in_flight) / node.capacity + node.engine_load
    p50 = health.latency_p50_ms if health.measured else UNMEASURED_MS
    latency = p50 / LATENCY_HORIZON_MS
    status = health.status  # identity tests: Enum.__hash__ is slow on the hot path
    if status is _HEALTHY:
        health_score = 1.0
    elif status is _DEGRADED:
        health_score = 0.5
    elif status is _UNKNOWN:
        health_score = 0.3
    else:
        health_score = 0.0
    scores = Scores(
        1.0 - latency if latency < 1.0 else 0.0,
        (tps / 1000.0 if tps < 1000.0 else 1.0) if tps else 0.0,
        1.0 - node.cost,
        0.5 if region is None else (1.0 if node.region == region else 0.0),
        health_score,
        0.0,
        1.0 - load if load < 1.0 else 0.0,
        1.0 if node.gpu else 0.0,
    )
    return Candidate(node, health, scores)


class PolicyKind(enum.Enum):
    """How a policy's score depends on the request (see gateway.policies)."""

    STATIC = "static"
    VARIANT = "variant"
    DYNAMIC = "dynamic"


OK: tuple[bool, str] = (True, "")


class Policy:
    """Base of the routing policies."""

    name = "policy"
    kind = PolicyKind.DYNAMIC
    weight = 1.0
    region_bounds = False
    """True when ``bounds()`` reads nothing of the request but whether ``qos.region`` is
    set (the index then computes them once per shape, not per request)."""

    def score(self, c: Candidate, request: InferRequest) -> float:
        """Score of the candidate (higher is better)."""
        raise NotImplementedError

    def is_eligible(self, c: Candidate, request: InferRequest) -> tuple[bool, str]:
        """(eligible, reason): a hard constraint."""
        return OK

    def variant(self, request: InferRequest) -> Hashable:
        """For VARIANT policies: the request key the score depends on."""
        return None

    def bounds(self, request: InferRequest, same_region: bool) -> tuple[float, float] | None:
        """For DYNAMIC policies: (lowest, highest) score for nodes in/out of the request's
        region (``same_region``); None when unknown."""
        return None
