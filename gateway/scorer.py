"""The router's policy, compiled for its candidate index: scores, checks and bounds.

``Scorer`` snapshots a ``CompositePolicy``'s members into tuples of bound methods and
answers, per node and request, what the index (gateway/index.py) and the strategies ask:
its base score (``base``), its total (``total``), why a policy rejects it (``rejection``),
the most the dynamic members can add (``upper_extras``), and on the hot path whether it
is selectable and with what score (``available``, ``candidate``).

Totals are computed as (base + sum of the dynamic scores) / n on every path, where base
is the sum of the static and variant scores in member order, so the walk's bound
(base + sum of the dynamic upper bounds) / n is never below a total, and the dry run
(gateway/explain.py) gives bit for bit the totals the router compares.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from gateway.breaker import CircuitBreaker
from gateway.catalog import NodeInfo
from gateway.health import HealthChecker, HealthState, NodeHealth
from gateway.policies import (
    Candidate,
    CompositePolicy,
    HealthPolicy,
    LatencyPolicy,
    Policy,
    PolicyKind,
    build_candidate,
    synthetic_health,
)
from shared.messages import InferRequest

_UNHEALTHY = HealthState.UNHEALTHY
"""Module global: an Enum member read through its class costs a quarter microsecond."""


class Scorer:
    """One policy's arithmetic over the nodes' health and breaker state."""

    def __init__(
        self,
        health: HealthChecker,
        breaker: CircuitBreaker,
        policy: Policy | None,
        min_score: float,
    ) -> None:
        self.health = health
        self.breaker = breaker
        self.min_score = min_score
        self._synthetic: dict[str, NodeHealth] = {}
        self._cached = health.get_cached_health
        self._admits = breaker.admits
        self.set_policy(policy)

    def set_policy(self, policy: Policy | None) -> None:
        """Use ``policy`` (default: the enterprise set)."""
        if policy is None:
            policy = CompositePolicy.enterprise_default()
        elif not isinstance(policy, CompositePolicy):
            policy = CompositePolicy([policy])
        self.policy: CompositePolicy = policy
        # The members are snapshot here: mutate a composite before handing it over.
        members = policy.policies
        self.n = len(members)
        self.dynamic = tuple(p.kind is PolicyKind.DYNAMIC for p in members)
        """Per member: is it DYNAMIC (its score left out of base)?"""
        self._base_scorers = tuple(p.score for p in members if p.kind is not PolicyKind.DYNAMIC)
        self._dyn_scorers = tuple(p.score for p in members if p.kind is PolicyKind.DYNAMIC)
        self._checks = tuple(
            p.is_eligible for p in members if type(p).is_eligible is not Policy.is_eligible
        )
        self._hot_checks = tuple(
            p.is_eligible
            for p in members
            if type(p).is_eligible not in (Policy.is_eligible, HealthPolicy.is_eligible)
        )
        """The checks ``candidate`` runs: HealthPolicy's (health score 0, i.e. UNHEALTHY)
        is implied by its status test."""
        self._variants = tuple(p.variant for p in members if p.kind is PolicyKind.VARIANT)
        self._bounds = tuple(p.bounds for p in members if p.kind is PolicyKind.DYNAMIC)
        self._extras_by_shape = all(
            p.region_bounds or type(p).bounds is Policy.bounds
            for p in members
            if p.kind is PolicyKind.DYNAMIC
        )
        """Do the dynamic bounds depend on the request only through its region being set?"""
        self._extras: dict[bool, tuple[float | None, float | None]] = {}
        self.ms_worth = sum(
            p.weight / (p.max_latency_s * 1000.0)
            for p in members
            if isinstance(p, LatencyPolicy) and p.max_latency_s > 0
        ) / max(self.n, 1)
        """What one millisecond of p50 is worth in total score (LatencyPolicy members)."""

    def health_of(self, node_id: str) -> NodeHealth:
        """The node's health snapshot (a synthetic UNKNOWN one if unregistered)."""
        h = self._cached(node_id)
        if h is None:
            h = self._synthetic.get(node_id)
            if h is None:
                h = self._synthetic[node_id] = synthetic_health(node_id)
        return h

    def base(self, node: NodeInfo, h: NodeHealth, request: InferRequest) -> float:
        """Sum of the static and variant scores, in member order (-1e300 if not finite)."""
        c, base = build_candidate(node, h, request), 0.0
        for score in self._base_scorers:
            base += score(c, request)
        return base if math.isfinite(base) else -1e300

    def total(self, c: Candidate, base: float, request: InferRequest) -> float:
        """(base + sum of the dynamic scores) / n; 1.0 for an empty composite."""
        if not self.n:
            return 1.0
        dyn = 0.0
        for score in self._dyn_scorers:
            dyn += score(c, request)
        return (base + dyn) / self.n

    def rejection(self, c: Candidate, request: InferRequest) -> str:
        """The first member's rejection reason, or "" when every member accepts."""
        for check in self._checks:
            ok, reason = check(c, request)
            if not ok:
                return reason or "rejected"
        return ""

    def upper_extras(self, request: InferRequest) -> tuple[float | None, float | None]:
        """The most the dynamic members add for a node in the request's region, and for
        one outside it (None: unbounded); computed once per shape when they allow it."""
        if not self._extras_by_shape:
            return self._upper_extra(request, True), self._upper_extra(request, False)
        shape = request.qos.region is None
        extras = self._extras.get(shape)
        if extras is None:
            extras = self._extras[shape] = (
                self._upper_extra(request, True),
                self._upper_extra(request, False),
            )
        return extras

    def _upper_extra(self, request: InferRequest, same_region: bool) -> float | None:
        hi = 0.0
        for bounds in self._bounds:
            b = bounds(request, same_region)
            if b is None:
                return None
            hi += b[1]
        return hi

    # -- the hot path -------------------------------------------------------------------

    def available(self, node: NodeInfo, exclude: Collection[str]) -> bool:
        """The cheapest checks of ``candidate``: not excluded, draining, full or behind an
        open circuit (health, policies and score not checked)."""
        nid = node.node_id
        return not (
            nid in exclude or node.draining or node.local_in_flight >= node.capacity
        ) and self._admits(nid)

    def candidate(
        self,
        node: NodeInfo,
        base: float,
        request: InferRequest,
        exclude: Collection[str],
        checked: bool = False,
        health: NodeHealth | None = None,
    ) -> Candidate | None:
        """The scored candidate (``base`` from its ordering entry), or None when the node
        is not selectable for this request (``checked``: ``available`` said yes;
        ``health``: its current snapshot, when the caller has it)."""
        nid = node.node_id
        if not checked and (
            nid in exclude
            or node.draining
            or node.local_in_flight >= node.capacity
            or not self._admits(nid)
        ):
            return None
        h = health or self._cached(nid) or self.health_of(nid)
        if h.status is _UNHEALTHY:
            return None
        c = build_candidate(node, h, request)
        for check in self._hot_checks:  # self.rejection and self.total, inlined (hot path)
            if not check(c, request)[0]:
                return None
        n = self.n
        if n:
            dyn = 0.0
            for score in self._dyn_scorers:
                dyn += score(c, request)
            total = (base + dyn) / n
        else:
            total = 1.0
        if not total >= self.min_score:
            return None
        c.scores.total = total
        return c
