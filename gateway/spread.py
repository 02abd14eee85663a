"""POWER_OF_TWO's candidates: two random members of the near-best band, read by index.

The router's default strategy (see gateway/router.py and docs/routing.md). ``Spreader``
reads a request's ``View`` (gateway/index.py): the near-best band's size from the heads
of its lists (a bisect only for a band larger than two, and then only when the end found
last time moved), two draws into it, and the less loaded of the two scored; a small or
sparse band is walked from the heads instead.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Collection
from itertools import islice
from random import Random

from gateway.catalog import NodeInfo
from gateway.health import NodeHealth
from gateway.index import CandidateIndex, View
from gateway.ordering import Entry, Ordering
from gateway.policies import Candidate
from gateway.strategies import RouterConfig
from shared.messages import InferRequest

_SMALL_BAND = 2
"""A band this small is walked instead of drawn at random."""
_DRAWS = 6
"""Random draws into a band before walking it instead (a sparse band)."""
_SCAN = 32
"""Most nodes looked at per list for the heads of a small band."""


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


class Spreader:
    """The POWER_OF_TWO choice over an index (scores in the index's units: a total)."""

    def __init__(
        self,
        index: CandidateIndex,
        config: RouterConfig,
        rng: Random,
        cached_health: Callable[[str], NodeHealth | None],
        admits: Callable[[str], bool],
    ) -> None:
        self._index = index
        self.config = config
        self._rng = rng
        self._random = rng.random
        self._cached_health = cached_health
        self._admits = admits

    def band(self, best: NodeInfo, health: NodeHealth) -> float:
        """How far below the score of ``best`` a POWER_OF_TWO candidate may be: what
        (``spread_tolerance`` + its load) x its p50 + ``spread_tolerance_ms`` is worth.
        A busy best widens the band."""
        cfg = self.config
        tolerance_ms = (cfg.spread_tolerance + best.load) * health.latency_p50_ms
        return (tolerance_ms + cfg.spread_tolerance_ms + 1.0) * self._index.ms_worth + 1e-9

    def pick(self, view: View, request: InferRequest, exclude: Collection[str]) -> list[Candidate]:
        """Candidates for the POWER_OF_TWO choice: two random members of the near-best
        band, or an UNKNOWN node and one; the less loaded wins, on equal load the UNKNOWN
        node (its share is then a member's), else the least recently used
        (``NodeInfo.last_dispatch``): identical nodes at concurrency 1 take turns instead
        of tossing coins. When the band has a single selectable member: it and the
        runner-up, in this order.

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
        # Inlined here (a call costs what a dozen lines do): self.band, NodeInfo.load
        # (plus the engine's part beyond the counted requests, gateway/nodeinfo.py),
        # and in the heads, index.available.
        cfg = self.config
        ref_health = self._cached_health(ref.node_id) or index.health_of(ref.node_id)
        ref_load = (ref.local_in_flight + ref.remote_in_flight) / ref.capacity + ref.engine_load
        tolerance_ms = (cfg.spread_tolerance + ref_load) * ref_health.latency_p50_ms
        band = (tolerance_ms + cfg.spread_tolerance_ms + 1.0) * index.ms_worth + 1e-9
        floor = ceiling - band
        floor_n = floor * n
        # _band_end's first lines inlined (most bands are small), reading each list's
        # entries from the head and no further than the band: each is a tuple and a
        # float, cold in memory when this view was last read many routes ago.
        key, m = hi1 - floor_n + 1e-9, len(first)
        if first[0][0] > key:
            end1 = 0
        elif m == 1 or first[1][0] > key:
            end1 = 1
        elif m == 2 or first[2][0] > key:
            end1 = 2
        else:
            end1 = _band_end(first, key, ends, 0)
        size = end1
        if second:
            key, m = hi2 - floor_n + 1e-9, len(second)
            if second[0][0] > key:
                pass
            elif m == 1 or second[1][0] > key:
                size += 1
            elif m == 2 or second[2][0] > key:
                size += 2
            else:
                size += _band_end(second, key, ends, 1)
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
                if a is not explorer and b.last_dispatch < a.last_dispatch:
                    # the first of an equal-load pair wins: make it the least recently
                    # used (an explorer stays first: its share is then a member's)
                    a, a_nb, b, b_nb = b, b_nb, a, a_nb
                # NodeInfo.load of a and b, inlined (engine-aware: gateway/nodeinfo.py)
                load_a = (a.local_in_flight + a.remote_in_flight) / a.capacity + a.engine_load
                load_b = (b.local_in_flight + b.remote_in_flight) / b.capacity + b.engine_load
                if load_b < load_a:
                    a, a_nb, b, b_nb = b, b_nb, a, a_nb
                h = ref_health if a is ref else None
                c = index.candidate(a, -a_nb, request, exclude, False, h)
                if c is None:
                    h = ref_health if b is ref else None
                    c = index.candidate(b, -b_nb, request, exclude, False, h)
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
                a, b = pair[0][3], pair[1][3]
                if explorer is None and -pair[1][0] >= floor:
                    if b.last_dispatch < a.last_dispatch:  # both near-best: on equal
                        pair.reverse()  # load, the least recently used
                        a, b = b, a
                load_a = (a.local_in_flight + a.remote_in_flight) / a.capacity + a.engine_load
                load_b = (b.local_in_flight + b.remote_in_flight) / b.capacity + b.engine_load
                if load_b < load_a:
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
            floor = ranked[0].score - self.band(ranked[0].node, ranked[0].health)
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
        a = b = None  # the best two so far, a first (what sorting the list would give)
        for entry in islice(first, _SCAN):  # bounds ascend (a slice would copy 32 entries)
            node = entry[2]
            nid = node.node_id
            if (
                nid in exclude
                or node.draining
                or node.local_in_flight >= node.capacity
                or not admits(nid)
            ):
                continue
            if a is None:
                a = ((entry[0] - hi1) / n, entry[1], entry[0], node)
            else:
                b = ((entry[0] - hi1) / n, entry[1], entry[0], node)
                break
        for entry in islice(second, _SCAN):
            key = (entry[0] - hi2) / n
            if b is not None and key >= b[0]:
                break  # nothing further in this list places better
            node = entry[2]
            nid = node.node_id
            if (
                node.region == region
                or nid in exclude
                or node.draining
                or node.local_in_flight >= node.capacity
                or not admits(nid)
            ):
                continue
            item = (key, entry[1], entry[0], node)
            if a is None:
                a = item
            elif item < a:
                a, b = item, a
            else:
                b = item  # better than the old b (else the loop had stopped)
        if a is None:
            return []
        return [a] if b is None else [a, b]
