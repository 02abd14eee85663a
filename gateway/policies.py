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
The interface (``Policy``, ``PolicyKind``) and what policies score (``Candidate``, ``Scores``,
``build_candidate``) are in gateway/scoring.py, re-exported here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from gateway.scoring import (
    HEALTH_SCORES,
    LATENCY_HORIZON_MS,
    OK,
    UNMEASURED_MS,
    Candidate,
    Policy,
    PolicyKind,
    Scores,
    build_candidate,
    synthetic_health,
)
from shared.messages import InferRequest

__all__ = [
    "HEALTH_SCORES",
    "LATENCY_HORIZON_MS",
    "OK",
    "Candidate",
    "CompositePolicy",
    "CostPolicy",
    "GpuPolicy",
    "HealthPolicy",
    "LatencyPolicy",
    "LoadPolicy",
    "LocalityPolicy",
    "Policy",
    "PolicyKind",
    "PrivacyPolicy",
    "Scores",
    "build_candidate",
    "synthetic_health",
]


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
        """(1 - p50_ms / max_ms) x weight on whole milliseconds; 0 at or past the max.

        A node without a latency sample (``NodeHealth.measured`` False) counts as
        ``UNMEASURED_MS``, as a node the health checker does not know, not as 0 ms: a
        new node behind non-streaming traffic took all of it at concurrency 1 until its
        first canary."""
        h = c.health
        lat_ms = int(h.latency_p50_ms) if h.measured else UNMEASURED_MS
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
