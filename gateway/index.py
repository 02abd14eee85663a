"""The router's candidate index: orderings of the nodes, and the best-first walk.

``CandidateIndex`` keeps one ``Ordering`` (gateway/ordering.py) per (capability, model,
policy variant key) seen in a request, maintained from catalog and health listeners, and
answers two questions fast: "is this node selectable for this request, and with what
score?" (``candidate``, from its ``Scorer`` base, gateway/scorer.py, where the arithmetic
of totals and bounds is) and "which are the k best?" (``walk``, a bounded walk that stops
when no later node can beat the k-th best; a tie cannot). ``view`` gives what
POWER_OF_TWO reads (gateway/spread.py). The full scans behind dry runs and the error of
a failed route are in gateway/explain.py.

A node's base depends on the request only through the variant key (the members'
contract), so a health report computes it once per key, not once per ordering.
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
from gateway.policies import Candidate, Policy
from gateway.scorer import Scorer
from shared.messages import InferRequest

__all__ = ["Bucket", "CandidateIndex", "View"]

Bucket = tuple[list[Entry], float | None, str | None]
"""(entries best first, the dynamic members' upper bound or None, a region to skip)."""

_UNKNOWN = HealthState.UNKNOWN
"""Module global: an Enum member read through its class costs a quarter microsecond."""
_HEALTHY = HealthState.HEALTHY
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
    """The nodes to explore (``CandidateIndex.explorable``): the region's, or all."""
    layout: int
    ends: list[int]
    """Where the near-best band of ``first`` and of ``second`` ended last time (a hint
    the router checks before it searches)."""


class CandidateIndex(Scorer):
    """Orderings of the nodes by base score, and the candidates they yield."""

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        policy: Policy | None,
        min_score: float,
        explore_samples: int = 0,
    ) -> None:
        self.catalog = catalog
        self.explore_samples = explore_samples
        """A HEALTHY node with fewer successes in a row than this is explored like an
        UNKNOWN one (``explorable``)."""
        super().__init__(health, breaker, policy, min_score)
        catalog.add_listener(self._on_catalog)
        health.add_listener(self._on_health)

    def set_policy(self, policy: Policy | None) -> None:
        """Use ``policy`` (default: the enterprise set); the orderings rebuild lazily."""
        super().set_policy(policy)
        self._orderings: dict[tuple[str, str | None, tuple[Hashable, ...]], Ordering] = {}
        self._views: dict[tuple[str, str | None, str | None, Hashable], View] = {}
        self._by_cap: dict[str, list[Ordering]] = {}
        self._memberships: dict[str, list[Ordering]] = {}

    # -- orderings ----------------------------------------------------------------------

    def explorable(self, h: NodeHealth) -> bool:
        """Is the node in its orderings' exploration bag: UNKNOWN, or HEALTHY after fewer
        than ``explore_samples`` successes in a row (measured only by its first answers
        since it joined or came back, which may be a cold start's)? Not a node whose
        older samples aged out: its idle canary re-measures it (exploring it cost a mixed
        fleet's slow nodes 4 % of the traffic at concurrency 1, bench/bench_spread)."""
        status = h.status
        if status is _UNKNOWN:
            return True
        return status is _HEALTHY and h.consecutive_successes < self.explore_samples

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
                unknown = self.explorable(h)
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
        unknown = self.explorable(h)
        bases: dict[tuple[Hashable, ...], float] = {}  # one base per variant key
        for o in orderings:
            base = bases.get(o.variant)
            if base is None:
                base = bases[o.variant] = self.base(node, h, o.template)
            o.put(node, base, unknown)  # a no-op when nothing changes

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
        unknown = self.explorable(h)
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
