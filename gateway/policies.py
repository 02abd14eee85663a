"""Routing policies: each scores a candidate (higher is better) and may reject it.

A policy declares how its score depends on the request, so that the router can keep an
incremental ordering (see docs/routing.md):

* ``STATIC``  - the score depends on the node and its health only;
* ``VARIANT`` - it also depends on a small discrete key of the request (``variant()``),
  e.g. the cost-tolerance branch; the router keeps one ordering per key;
* ``DYNAMIC`` - it depends on the request or on fast-moving state (region, load);
  ``bounds()`` gives the range it can take so the router can stop scanning early.
  A dynamic policy without bounds forces a full scan (always correct, slower).

Eligibility (``is_eligible``) is always evaluated per request and returns a reason.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence

import msgspec

from gateway.catalog import NodeInfo
from gateway.health import HealthState, NodeHealth
from shared.messages import InferRequest

HEALTH_SCORES = {
    HealthState.HEALTHY: 1.0,
    HealthState.DEGRADED: 0.5,
    HealthState.UNKNOWN: 0.3,
    HealthState.UNHEALTHY: 0.0,
}
"""Health input score per state (as the reference router)."""

_HEALTHY, _DEGRADED, _UNKNOWN = HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNKNOWN
"""Module globals: an Enum member read through its class costs a quarter microsecond."""

LATENCY_HORIZON_MS = 5000.0
"""p50 at which the latency input score reaches 0."""


def synthetic_health(node_id: str) -> NodeHealth:
    """What an unregistered node looks like: UNKNOWN, p50 1 s, p99 5 s, never measured."""
    return NodeHealth(
        node_id=node_id,
        status=HealthState.UNKNOWN,
        latency_p50_ms=1000.0,
        latency_p90_ms=5000.0,
        latency_p99_ms=5000.0,
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


def build_candidate(node: NodeInfo, health: NodeHealth, request: InferRequest) -> Candidate:
    """Fill the normalised inputs of a candidate (total left at 0 for the policy)."""
    region = request.qos.region
    tps = health.tokens_per_s
    if tps is None:
        tps = node.tokens_per_s
    load = max(node.in_flight, node.local_in_flight) / node.capacity
    latency = health.latency_p50_ms / LATENCY_HORIZON_MS
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
    """How a policy's score depends on the request (see module docstring)."""

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


class HealthPolicy(Policy):
    """Prefers healthy nodes; rejects a zero health score."""

    name, kind = "health", PolicyKind.STATIC

    def __init__(
        self, weight: float = 2.0, healthy_score: float = 1.0, degraded_score: float = 0.3
    ) -> None:
        self.weight = weight
        self.healthy_score = healthy_score
        self.degraded_score = degraded_score

    def score(self, c: Candidate, request: InferRequest) -> float:
        """health input x weight."""
        return c.scores.health * self.weight

    def is_eligible(self, c: Candidate, request: InferRequest) -> tuple[bool, str]:
        """Rejects health score 0 (UNHEALTHY)."""
        return OK if c.scores.health > 0.0 else (False, "health: unhealthy")


class LatencyPolicy(Policy):
    """Prefers low p50; enforces max_latency_s and the request's latency/throughput QoS."""

    name, kind = "latency", PolicyKind.STATIC

    def __init__(self, weight: float = 1.0, max_latency_s: float = 5.0) -> None:
        self.weight = weight
        self.max_latency_s = max_latency_s

    def score(self, c: Candidate, request: InferRequest) -> float:
        """(1 - p50_ms / max_ms) x weight on whole milliseconds; 0 at or past the max."""
        lat_ms = int(c.health.latency_p50_ms)
        max_ms = int(self.max_latency_s * 1000)
        if lat_ms >= max_ms:
            return 0.0
        return (1.0 - lat_ms / max_ms) * self.weight

    def is_eligible(self, c: Candidate, request: InferRequest) -> tuple[bool, str]:
        """p50 <= max_latency_s; measured p99 <= qos.max_latency_ms; measured tokens/s >=
        qos.min_throughput."""
        h = c.health
        if h.latency_p50_ms > self.max_latency_s * 1000:
            return False, f"latency: p50 {h.latency_p50_ms:.0f} ms over {self.max_latency_s:g} s"
        qos = request.qos
        if qos.max_latency_ms is not None and h.samples and h.latency_p99_ms > qos.max_latency_ms:
            return False, f"qos: p99 {h.latency_p99_ms:.0f} ms over {qos.max_latency_ms} ms"
        if qos.min_throughput is not None:
            tps = h.tokens_per_s if h.tokens_per_s is not None else c.node.tokens_per_s
            if tps is not None and tps < qos.min_throughput:
                return False, f"qos: {tps:.0f} tokens/s under {qos.min_throughput:g}"
        return OK


class PrivacyPolicy(Policy):
    """Data protection: node privacy level and the request's allowed regions (scores 1.0)."""

    name, kind, weight = "privacy", PolicyKind.STATIC, 1.0

    def score(self, c: Candidate, request: InferRequest) -> float:
        """Always 1.0 (a pure constraint)."""
        return 1.0

    def is_eligible(self, c: Candidate, request: InferRequest) -> tuple[bool, str]:
        """node.privacy >= qos.privacy and node.region in qos.allowed_regions (if given)."""
        node, qos = c.node, request.qos
        if node.privacy is not qos.privacy and node.privacy.rank < qos.privacy.rank:
            return False, f"privacy: node serves up to {node.privacy}, request needs {qos.privacy}"
        if qos.allowed_regions is not None and node.region not in qos.allowed_regions:
            return False, f"privacy: region {node.region} not in allowed_regions"
        return OK


class LocalityPolicy(Policy):
    """Prefers nodes in the caller's region (qos.region)."""

    name, kind, region_bounds = "locality", PolicyKind.DYNAMIC, True

    def __init__(
        self, weight: float = 1.0, same_region_boost: float = 0.3, cross_region_penalty: float = 0.1
    ) -> None:
        self.weight = weight
        self.same_region_boost = same_region_boost
        self.cross_region_penalty = cross_region_penalty

    def _value(self, locality: float) -> float:
        penalty = self.cross_region_penalty if locality <= 0.0 else 0.0
        return (0.5 + locality * self.same_region_boost - penalty) * self.weight

    def score(self, c: Candidate, request: InferRequest) -> float:
        """(0.5 + locality x boost - penalty if cross-region) x weight; 0.65 with no region."""
        locality = c.scores.locality  # self._value(locality), inlined (hot path)
        penalty = self.cross_region_penalty if locality <= 0.0 else 0.0
        return (0.5 + locality * self.same_region_boost - penalty) * self.weight

    def bounds(self, request: InferRequest, same_region: bool) -> tuple[float, float] | None:
        """Exact per bucket: same region, other region, or neutral when no region is given."""
        if request.qos.region is None:
            v = self._value(0.5)
        else:
            v = self._value(1.0 if same_region else 0.0)
        return v, v


class CostPolicy(Policy):
    """cost_tolerance <= 50: cheapest node (1 - cost); above: fastest (throughput)."""

    name, kind = "cost", PolicyKind.VARIANT

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.region_costs: dict[str, float] = {}

    def with_region_cost(self, region: str, cost: float) -> CostPolicy:
        """Override the cost of every node in a region (clamped to 0..1)."""
        self.region_costs[region] = min(max(cost, 0.0), 1.0)
        return self

    def score(self, c: Candidate, request: InferRequest) -> float:
        """throughput x weight if tolerance > 50, else (1 - cost) x weight."""
        if request.qos.cost_tolerance / 100 > 0.5:
            return c.scores.throughput * self.weight
        cost = self.region_costs.get(c.node.region, c.node.cost)
        return (1.0 - cost) * self.weight

    def variant(self, request: InferRequest) -> Hashable:
        """Which branch the request takes."""
        return request.qos.cost_tolerance > 50


class LoadPolicy(Policy):
    """Prefers idle nodes: (1 - load) x weight, load = in-flight / capacity."""

    name, kind, region_bounds = "load", PolicyKind.DYNAMIC, True

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def score(self, c: Candidate, request: InferRequest) -> float:
        """(1 - min(load, 1)) x weight."""
        return c.scores.load * self.weight

    def bounds(self, request: InferRequest, same_region: bool) -> tuple[float, float] | None:
        """0 .. weight."""
        return 0.0, self.weight


class GpuPolicy(Policy):
    """Soft preference for GPU nodes when qos.prefer_gpu (CPU nodes score half)."""

    name, kind = "gpu", PolicyKind.VARIANT

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def score(self, c: Candidate, request: InferRequest) -> float:
        """weight for GPU nodes or without preference; weight / 2 for CPU nodes if preferred."""
        if not request.qos.prefer_gpu or c.node.gpu:
            return self.weight
        return 0.5 * self.weight

    def variant(self, request: InferRequest) -> Hashable:
        """The request's prefer_gpu."""
        return request.qos.prefer_gpu


class CompositePolicy(Policy):
    """Mean of its members' scores; eligible when every member is (empty: 1.0, eligible)."""

    name = "composite"

    def __init__(self, policies: Sequence[Policy] = ()) -> None:
        self.policies: list[Policy] = list(policies)

    @classmethod
    def enterprise_default(cls) -> CompositePolicy:
        """health 2.0, latency 1.0, privacy, locality 1.0, cost 1.0 (the reference set)."""
        return cls(
            [HealthPolicy(), LatencyPolicy(), PrivacyPolicy(), LocalityPolicy(), CostPolicy()]
        )

    def with_policy(self, policy: Policy) -> CompositePolicy:
        """Append a member."""
        self.policies.append(policy)
        return self

    def score(self, c: Candidate, request: InferRequest) -> float:
        """Arithmetic mean of member scores (1.0 when empty)."""
        if not self.policies:
            return 1.0
        total = 0.0
        for p in self.policies:
            total += p.score(c, request)
        return total / len(self.policies)

    def is_eligible(self, c: Candidate, request: InferRequest) -> tuple[bool, str]:
        """All members eligible; the reason names the first that is not."""
        for p in self.policies:
            ok, reason = p.is_eligible(c, request)
            if not ok:
                return False, reason
        return OK

    def rejected_by(self, c: Candidate, request: InferRequest) -> list[str]:
        """Names of the members that reject the candidate."""
        return [p.name for p in self.policies if not p.is_eligible(c, request)[0]]

    # -- what the router's incremental index needs ---------------------------------

    def variant_key(self, request: InferRequest) -> tuple[Hashable, ...]:
        """The request key of every VARIANT member."""
        return tuple(p.variant(request) for p in self.policies if p.kind is PolicyKind.VARIANT)

    def base_sum(self, c: Candidate, request: InferRequest) -> float:
        """Sum of the STATIC and VARIANT member scores."""
        return sum(p.score(c, request) for p in self.policies if p.kind is not PolicyKind.DYNAMIC)

    def dynamic_bounds(
        self, request: InferRequest, same_region: bool
    ) -> tuple[float, float] | None:
        """Summed bounds of the DYNAMIC members; None if one is unbounded."""
        lo = hi = 0.0
        for p in self.policies:
            if p.kind is PolicyKind.DYNAMIC:
                b = p.bounds(request, same_region)
                if b is None:
                    return None
                lo, hi = lo + b[0], hi + b[1]
        return lo, hi
