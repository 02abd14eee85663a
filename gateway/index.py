"""The router's candidate index: scores, eligibility, and the best-first walk.

``CandidateIndex`` keeps one ``Ordering`` (gateway/ordering.py) per (capability, model,
policy variant key) seen in a request, maintained from catalog and health listeners, and
answers two questions fast: "is this node selectable for this request, and with what
score?" (``candidate``) and "which are the k best?" (``walk``, a bounded walk that stops
when no later node can beat the k-th best; a tie cannot). The full scans behind dry
runs and the error of a failed route are in gateway/explain.py.

Totals are computed as (base + sum of the dynamic scores) / n on every path, where base
is the sum of the static and variant scores in member order, so the walk's bound
(base + sum of the dynamic upper bounds) / n is never below a total, and the dry run
gives bit for bit the totals ``walk`` compares. A node's base depends on the request only
through the variant key (the members' contract), so a health report computes it once per
key, not once per ordering.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Hashable
from typing import NamedTuple

from gateway.breaker import CircuitBreaker
from gateway.catalog import CatalogEvent, ModelCatalog, NodeInfo
from gateway.health import HealthChecker, HealthState, NodeHealth
from gateway.ordering import Bag, Entry, Ordering
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

Bucket = tuple[list[Entry], float | None, str | None]
"""(entries best first, the dynamic members' upper bound or None, a region to skip)."""

_UNHEALTHY, _UNKNOWN = HealthState.UNHEALTHY, HealthState.UNKNOWN
"""Module globals: an Enum member read through its class costs a quarter microsecond."""
_NO_ENTRIES: list[Entry] = []
"""A view's second list when it has only one (never written)."""
_MAX_VIEWS = 4096
"""Cached views kept at most (request regions are the callers' strings)."""


class View(NamedTuple):
    """What POWER_OF_TWO reads for one request shape: its ordering and lists, and the
    dynamic policies' upper bounds in them. Cached per (capability, model, variant key,
    region) when the bounds depend on nothing else; valid while the ordering's
    ``layout`` is the one recorded."""

    ordering: Ordering
    first: list[Entry]
    """The request region's list, or the whole ordering."""
    hi1: float | None
    """The most the dynamic policies add to a node of ``first`` (None: unbounded)."""
    second: list[Entry]
    """The whole ordering, skipping the region, when ``first`` is a region's; else empty."""
    hi2: float | None
    """The most they add to a node of ``second`` outside the region."""
    unknown: Bag | None
    """The UNKNOWN nodes to explore: the region's, or all of them."""
    layout: int
    ends: list[int]
    """Where the near-best band of ``first`` and of ``second`` ended last time (a hint
    the router checks before it searches)."""


class CandidateIndex:
    """Orderings of the nodes by base score, and the candidates they yield."""

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        policy: Policy | None,
        min_score: float,
    ) -> None:
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.min_score = min_score
        self._synthetic: dict[str, NodeHealth] = {}
        self._cached = health.get_cached_health
        self._admits = breaker.admits
        self.set_policy(policy)
        catalog.add_listener(self._on_catalog)
        health.add_listener(self._on_health)

    def set_policy(self, policy: Policy | None) -> None:
        """Use ``policy`` (default: the enterprise set); the orderings rebuild lazily."""
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
        self._orderings: dict[tuple[str, str | None, tuple[Hashable, ...]], Ordering] = {}
        self._views: dict[tuple[str, str | None, str | None, Hashable], View] = {}
        self._by_cap: dict[str, list[Ordering]] = {}
        self._memberships: dict[str, list[Ordering]] = {}

    # -- scores -----------------------------------------------------------------------

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

    # -- orderings ----------------------------------------------------------------------

    def _variant_key(self, request: InferRequest) -> tuple[Hashable, ...]:
        variants = self._variants
        if len(variants) == 1:  # the default policy's (cost)
            return (variants[0](request),)
        return tuple([v(request) for v in variants])

    def view(self, request: InferRequest) -> View:
        """The request's ``View`` (see there)."""
        variants = self._variants
        if len(variants) == 1:  # the default policy's (cost): the key flat
            variant: Hashable = variants[0](request)
        else:
            variant = tuple([v(request) for v in variants])
        key = (request.capability, request.model, request.qos.region, variant)
        v = self._views.get(key)
        if v is not None and v[6] == v[0].layout:
            return v
        o = self.ordering(request)
        same, other = self.upper_extras(request)
        region = request.qos.region
        regional = o.by_region.get(region) if region is not None else None
        if region is not None and regional is not None:
            bag = o.unknown_by_region.get(region)
            v = View(o, regional, same, o.entries, other, bag, o.layout, [0, 0])
        else:
            v = View(o, o.entries, other, _NO_ENTRIES, 0.0, o.unknown, o.layout, [0, 0])
        if self._extras_by_shape:
            if len(self._views) >= _MAX_VIEWS:
                self._views.clear()
            self._views[key] = v
        return v

    def ordering(self, request: InferRequest) -> Ordering:
        """The request's ordering (built on first use, then kept up to date)."""
        vkey = self._variant_key(request)
        key = (request.capability, request.model, vkey)
        o = self._orderings.get(key)
        if o is None:
            o = Ordering(request.capability, request.model, request, vkey)
            items = []
            for node in self.catalog.nodes_for(request.capability, request.model):
                h = self.health_of(node.node_id)
                unknown = h.status is _UNKNOWN
                items.append((node, self.base(node, h, request), unknown))
                self._memberships.setdefault(node.node_id, []).append(o)
            o.fill(items)
            self._orderings[key] = o
            self._by_cap.setdefault(request.capability, []).append(o)
        return o

    def _on_health(self, node_id: str) -> None:
        orderings = self._memberships.get(node_id)
        if not orderings:
            return
        node = self.catalog.node(node_id)
        if node is None:
            return
        h = self.health_of(node_id)
        unknown = h.status is _UNKNOWN
        bases: dict[tuple[Hashable, ...], float] = {}  # one base per variant key
        for o in orderings:
            base = bases.get(o.variant)
            if base is None:
                base = bases[o.variant] = self.base(node, h, o.template)
            if not o.same(node, base, unknown):
                o.put(node, base, unknown)

    def _on_catalog(self, event: CatalogEvent, node: NodeInfo) -> None:
        nid = node.node_id
        if event is CatalogEvent.CHANGED:
            self._on_health(nid)
            return
        for o in self._memberships.pop(nid, ()):
            o.remove(nid)
        self._synthetic.pop(nid, None)
        if event is CatalogEvent.REMOVED:
            return
        h = self.health_of(nid)
        unknown = h.status is _UNKNOWN
        joined: list[Ordering] = []
        bases: dict[tuple[Hashable, ...], float] = {}  # one base per variant key
        for cap in node.capabilities:
            for o in self._by_cap.get(cap, ()):
                if o.matches(node):
                    base = bases.get(o.variant)
                    if base is None:
                        base = bases[o.variant] = self.base(node, h, o.template)
                    o.put(node, base, unknown)
                    joined.append(o)
        if joined:
            self._memberships[nid] = joined

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

    def buckets(self, o: Ordering, request: InferRequest) -> list[Bucket]:
        """What to walk: the request region's nodes first, then the others."""
        region = request.qos.region
        same, other = self.upper_extras(request)
        if region is not None and region in o.by_region:
            return [(o.by_region[region], same, None), (o.entries, other, region)]
        return [(o.entries, other, None)]

    def walk(
        self,
        o: Ordering,
        request: InferRequest,
        exclude: Collection[str],
        k: int,
        floor: float = -math.inf,
        buckets: list[Bucket] | None = None,
    ) -> list[Candidate]:
        """The k best selectable candidates scoring at least ``floor``, best first
        (``buckets``: ``self.buckets(o, request)`` when the caller has them).

        Stops at the first node whose bound cannot beat the k-th best: a tie cannot
        (within a list the node met first has the lower catalog order)."""
        n, stop, candidate = self.n, max(self.min_score, floor), self.candidate
        best: list[tuple[float, int, Candidate]] = []
        for entries, hi, skip in buckets or self.buckets(o, request):
            for neg_base, seq, node in entries:
                if hi is not None:
                    upper = (hi - neg_base) / n if n else 1.0
                    if upper < stop or (len(best) >= k and upper <= best[0][0]):
                        break
                if skip is not None and node.region == skip:
                    continue
                c = candidate(node, -neg_base, request, exclude)
                if c is None or c.scores.total < stop:
                    continue
                item = (c.scores.total, -seq, c)
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item[:2] > best[0][:2]:
                    heapq.heapreplace(best, item)
        best.sort(key=lambda t: (-t[0], -t[1]))
        return [t[2] for t in best]
