"""The router: picks a node for a request from catalog, health, breaker and policies.

``route`` is the hot path. It never scores the whole fleet: the candidate index
(gateway/index.py) keeps the nodes of each (capability, model, policy variant) ordered by
the request-independent part of their score and walks that ordering best first, stopping
as soon as no later node can beat what it found. The default strategy, ``POWER_OF_TWO``,
draws two random members of the near-best band by index (ties and near-ties cost nothing
to skip), sometimes a node still UNKNOWN instead (a new node's bounded share), and sends
the request to the less loaded of the two. ``get_candidates`` is the full scan (dry runs).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection
from dataclasses import dataclass
from itertools import islice

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog, NodeInfo
from gateway.clock import MONOTONIC, Clock
from gateway.explain import classify, explain
from gateway.health import HealthChecker, NodeHealth
from gateway.index import CandidateIndex, View
from gateway.ordering import Entry, Ordering
from gateway.policies import Candidate, CompositePolicy, Policy
from gateway.strategies import Chooser, LoadBalanceStrategy
from shared.messages import InferRequest

__all__ = ["LoadBalanceStrategy", "Router", "RouterConfig"]

_POWER_OF_TWO = LoadBalanceStrategy.POWER_OF_TWO
_LEAST_LATENCY = LoadBalanceStrategy.LEAST_LATENCY
"""Module globals: an Enum member read through its class costs a quarter microsecond."""
_SMALL_BAND = 2
"""A band this small is walked instead of drawn at random."""
_DRAWS = 6
"""Random draws into a band before walking it instead (a sparse band)."""
_SCAN = 32
"""Most nodes looked at per list for the heads of a small band."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings."""

    max_candidates: int = 10
    """How many of the best eligible candidates a top-k strategy chooses among."""
    min_score: float = 0.1
    """Candidates scoring below this are not selectable."""
    strategy: LoadBalanceStrategy = LoadBalanceStrategy.POWER_OF_TWO
    seed: int | None = None
    """Seed of the random strategies (None: from the OS)."""
    spread_tolerance: float = 0.25
    """POWER_OF_TWO: candidates scoring within what this fraction (plus the best's load)
    of the best's p50 latency is worth, plus ``spread_tolerance_ms``, are near-equal."""
    spread_tolerance_ms: float = 5.0
    challenge: float = 8.0
    """POWER_OF_TWO: when the band has one selectable member, the runner-up takes the
    request if it is less loaded and within this many bands of the best."""
    explore_max_in_flight: int = 1
    """POWER_OF_TWO: an UNKNOWN node outside the band is still drawn, with at most this
    many of this gateway's requests in flight (a new node's bounded share)."""


def _band_end(entries: list[Entry], key: float, ends: list[int], k: int) -> int:
    """How many entries have -base <= ``key`` (the band's end in the list): up to
    ``_SMALL_BAND`` (2) read from the head; past them, the end found last time
    (``ends[k]``) if it still is one, else a bisect, remembered. (A bisect reads a dozen
    entries of a long list, each a tuple and a float in memory that a health report
    between two routes has made cold.)"""
    m = len(entries)
    if not m or entries[0][0] > key:
        return 0
    if m == 1 or entries[1][0] > key:
        return 1
    if m == 2 or entries[2][0] > key:
        return 2
    end = ends[k]
    if (
        _SMALL_BAND < end <= m
        and entries[end - 1][0] <= key
        and (end == m or entries[end][0] > key)
    ):
        return end
    end = ends[k] = bisect.bisect_right(entries, (key, math.inf))
    return end


class Router:
    """Routes requests to nodes (see module docstring and docs/routing.md)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        config: RouterConfig | None = None,
        policy: Policy | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.config = config or RouterConfig()
        self._clock = clock
        self._chooser = Chooser(self.config.seed)
        self._rng = self._chooser.rng
        self._random = self._rng.random
        self._admits = breaker.admits
        self._cached_health = health.get_cached_health
        self._index = CandidateIndex(catalog, health, breaker, policy, self.config.min_score)

    @property
    def policy(self) -> CompositePolicy:
        """The composite policy in use."""
        return self._index.policy

    def with_policy(self, policy: Policy) -> Router:
        """Replace the policy (drops the orderings; they rebuild lazily)."""
        self._index.set_policy(policy)
        return self

    def route(self, request: InferRequest, exclude: Collection[str] = ()) -> Candidate:
        """Choose a node; raises NoCapacity, AllNodesUnhealthy, PolicyViolation, Overloaded.

        A HALF_OPEN node's probe slot is taken here: the caller reports an outcome
        (breaker.record_success/record_failure) or calls breaker.release.
        """
        strategy, index = self.config.strategy, self._index
        if strategy is _POWER_OF_TWO:
            top = self._spread(index.view(request), request, exclude)
        elif strategy is _LEAST_LATENCY:
            top = index.walk(index.ordering(request), request, exclude, 1)
        elif strategy is LoadBalanceStrategy.CONSISTENT_HASH:
            top = index.walk(index.ordering(request), request, exclude, 1 << 30)
        else:
            k = max(1, self.config.max_candidates)
            top = index.walk(index.ordering(request), request, exclude, k)
        while top:
            chosen = top[0] if len(top) == 1 else self._chooser.pick(strategy, top, request)
            if self.breaker.try_acquire(chosen.node.node_id):
                return chosen
            top.remove(chosen)
        raise classify(index, request, exclude)

    def spread_band(self, best: NodeInfo, health: NodeHealth) -> float:
        """How far below the score of ``best`` a POWER_OF_TWO candidate may be: what
        (``spread_tolerance`` + its load) x its p50 + ``spread_tolerance_ms`` is worth.
        A busy best widens the band."""
        cfg = self.config
        tolerance_ms = (cfg.spread_tolerance + best.load) * health.latency_p50_ms
        return (tolerance_ms + cfg.spread_tolerance_ms + 1.0) * self._index.ms_worth + 1e-9

    def _spread(
        self, view: View, request: InferRequest, exclude: Collection[str]
    ) -> list[Candidate]:
        """Candidates for the POWER_OF_TWO choice (the less loaded of the first two wins):
        two random members of the near-best band, or one and an UNKNOWN node; when the
        band has a single selectable member, it and the runner-up, in this order.

        A band of more than two is drawn by index, and only the winner of the draw is
        scored (unless it fails a check); a smaller or sparse band is walked. The lists
        read are the view's: the request region's, then the others (see ``View``)."""
        index, n = self._index, self._index.n
        o, first, hi1, second, hi2, bag, _, ends = view
        region = request.qos.region
        if not first:
            return []
        if not n or hi1 is None or hi2 is None:
            return self._walked(o, request, exclude, None)  # no bounds: no band to read
        ceiling, ref = (hi1 - first[0][0]) / n, first[0][2]  # the best bound, and its node
        if second:
            upper = (hi2 - second[0][0]) / n
            if upper > ceiling:
                ceiling, ref = upper, second[0][2]
        # Inlined here (a call costs what a dozen lines do): self.spread_band, NodeInfo.load,
        # and in the heads, index.available.
        cfg = self.config
        ref_health = self._cached_health(ref.node_id) or index.health_of(ref.node_id)
        ref_load = max(ref.in_flight, ref.local_in_flight) / ref.capacity
        tolerance_ms = (cfg.spread_tolerance + ref_load) * ref_health.latency_p50_ms
        band = (tolerance_ms + cfg.spread_tolerance_ms + 1.0) * index.ms_worth + 1e-9
        floor = ceiling - band
        floor_n = floor * n
        end1 = _band_end(first, hi1 - floor_n + 1e-9, ends, 0)
        size = end1 + _band_end(second, hi2 - floor_n + 1e-9, ends, 1)
        random = self._random
        explorer = None
        if bag is not None and bag.items:
            unknown = bag.items
            if random() * (size + len(unknown)) >= size:
                node = unknown[int(random() * len(unknown))]
                if node.local_in_flight < cfg.explore_max_in_flight:
                    explorer = node
        if size > _SMALL_BAND:  # the pool of two (a, b) with their -base
            a: NodeInfo | None = None
            b: NodeInfo | None = None
            a_nb = b_nb = 0.0
            if explorer is not None:
                a, a_nb = explorer, o.keys[explorer.node_id][0][0]
            for _ in range(_DRAWS):
                i = int(random() * size)
                if i < end1:
                    neg_base, _, node = first[i]
                else:  # the band's part outside the region
                    neg_base, _, node = second[i - end1]
                    if node.region == region:
                        continue
                if a is None:
                    a, a_nb = node, neg_base
                elif node is not a:
                    b, b_nb = node, neg_base
                    break
            if a is not None and b is not None:
                if random() < 0.5:  # the first of an equal-load pair wins: make it either
                    a, a_nb, b, b_nb = b, b_nb, a, a_nb
                if max(b.in_flight, b.local_in_flight) / b.capacity < (
                    max(a.in_flight, a.local_in_flight) / a.capacity
                ):
                    a, a_nb, b, b_nb = b, b_nb, a, a_nb
                c = index.candidate(a, -a_nb, request, exclude)
                if c is None:
                    c = index.candidate(b, -b_nb, request, exclude)
                if c is not None:
                    return [c]
        if size <= _SMALL_BAND:  # the heads of the lists: the band and the runner-up
            heads = self._heads(first, hi1, second, hi2, region, exclude)
            if explorer is not None:  # explored as if near-best
                others = [h for h in heads if h[3] is not explorer]
                pair = [(-ceiling, 0, o.keys[explorer.node_id][0][0], explorer), *others[:1]]
            elif len(heads) == 2 and -heads[1][0] < ceiling - cfg.challenge * band:
                pair = heads[:1]  # the runner-up is too far behind to take load
            else:
                pair = heads
            if len(pair) == 2:
                if -pair[1][0] >= floor and random() < 0.5:
                    pair.reverse()  # both near-best: on equal load, either
                a, b = pair[0][3], pair[1][3]
                if max(b.in_flight, b.local_in_flight) / b.capacity < (
                    max(a.in_flight, a.local_in_flight) / a.capacity
                ):
                    pair.reverse()
            for _, _, neg_base, node in pair:
                h = ref_health if node is ref else None
                c = index.candidate(node, -neg_base, request, exclude, node is not explorer, h)
                if c is not None:
                    return [c]
        return self._walked(o, request, exclude, floor)  # sparse, or policies said no

    def _walked(
        self, o: Ordering, request: InferRequest, exclude: Collection[str], floor: float | None
    ) -> list[Candidate]:
        """The slow way: the ``max_candidates`` best walked, two of those scoring at least
        ``floor`` (default: the band of the best) at random, else the best two."""
        ranked = self._index.walk(o, request, exclude, max(2, self.config.max_candidates))
        if not ranked:
            return ranked
        if floor is None:
            floor = ranked[0].score - self.spread_band(ranked[0].node, ranked[0].health)
        band = [c for c in ranked if c.score >= floor]
        if len(band) < 2:
            return ranked[:2]  # the best against the runner-up
        random = self._rng.random
        i = int(random() * len(band))
        j = int(random() * (len(band) - 1))
        return [band[i], band[j + (j >= i)]]

    def _heads(
        self,
        first: list[Entry],
        hi1: float,
        second: list[Entry],
        hi2: float,
        region: str | None,
        exclude: Collection[str],
    ) -> list[tuple[float, int, float, NodeInfo]]:
        """The two best-placed available nodes as (-bound, seq, -base, node), best first
        (the cheapest checks only; at most ``_SCAN`` nodes looked at per list; ``region``
        skipped in ``second``)."""
        n, admits = self._index.n, self._admits
        heads: list[tuple[float, int, float, NodeInfo]] = []
        for neg_base, seq, node in islice(first, _SCAN):  # bounds ascend: the first two
            nid = node.node_id
            if not (
                nid in exclude or node.draining or node.local_in_flight >= node.capacity
            ) and admits(nid):
                heads.append(((neg_base - hi1) / n, seq, neg_base, node))
                if len(heads) == 2:
                    break
        for neg_base, seq, node in islice(second, _SCAN):
            key = (neg_base - hi2) / n
            if len(heads) >= 2 and key >= heads[1][0]:
                break  # nothing further in this list places better
            nid = node.node_id
            if (
                node.region != region
                and not (nid in exclude or node.draining or node.local_in_flight >= node.capacity)
                and admits(nid)
            ):
                heads.append((key, seq, neg_base, node))
                if len(heads) > 2:
                    heads.sort()
                    heads.pop()
        if len(heads) == 2 and heads[1] < heads[0]:  # what heads.sort() would do
            heads.reverse()
        return heads

    def rendezvous_weight(self, key: str, node_id: str) -> int:
        """Highest-random-weight hash of (key, node): ConsistentHash picks the maximum."""
        return self._chooser.rendezvous_weight(key, node_id)

    def get_candidates(self, request: InferRequest) -> list[Candidate]:
        """Every node for the request's capability/model, scored and explained, best first."""
        return explain(self._index, request)
