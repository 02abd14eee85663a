"""The router: picks a node for a request from catalog, health, breaker and policies.

``route`` is the hot path. It never scores the whole fleet: for each (capability, model,
policy variant) it keeps the nodes ordered by the request-independent part of their score
("base"), updated incrementally when a health report or heartbeat changes a node, and
split by region. A route walks that ordering best first, applies the request-specific
policies to the few nodes it meets, and stops as soon as no later node can beat what it
found (the dynamic policies' bounds say how much a node can still gain). The result is
what a full scan would give; ``get_candidates`` is that full scan (for dry runs).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import heapq
import math
import random
from collections.abc import Collection, Hashable
from dataclasses import dataclass

from gateway.breaker import CircuitBreaker, CircuitState
from gateway.catalog import CatalogEvent, ModelCatalog, NodeInfo
from gateway.clock import MONOTONIC, Clock
from gateway.health import HealthChecker, HealthState, NodeHealth
from gateway.policies import (
    Candidate,
    CompositePolicy,
    Policy,
    PolicyKind,
    build_candidate,
    synthetic_health,
)
from shared.errors import AllNodesUnhealthy, NoCapacity, Overloaded, PolicyViolation
from shared.messages import InferRequest

_EPS = 1e-9
_M64 = (1 << 64) - 1


class LoadBalanceStrategy(enum.Enum):
    """How to choose among the best eligible candidates."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    LEAST_LATENCY = "least_latency"
    WEIGHTED_RANDOM = "weighted_random"
    CONSISTENT_HASH = "consistent_hash"
    POWER_OF_TWO = "power_of_two"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings."""

    max_candidates: int = 10
    """How many of the best eligible candidates a strategy chooses among."""
    min_score: float = 0.1
    """Candidates scoring below this are not selectable."""
    strategy: LoadBalanceStrategy = LoadBalanceStrategy.LEAST_LATENCY
    seed: int | None = None
    """Seed of the random strategies (None: from the OS)."""


_Entry = tuple[float, int, NodeInfo]  # (-base, seq, node): ascending = best first


class _Ordering:
    """Nodes of one (capability, model, variant) sorted by base score, also per region."""

    __slots__ = ("by_region", "capability", "entries", "keys", "model", "template")

    def __init__(self, capability: str, model: str | None, template: InferRequest) -> None:
        self.capability = capability
        self.model = model
        self.template = template
        self.entries: list[_Entry] = []
        self.by_region: dict[str, list[_Entry]] = {}
        self.keys: dict[str, tuple[_Entry, str]] = {}

    def matches(self, node: NodeInfo) -> bool:
        if self.model is None:
            return self.capability in node.capabilities
        return self.capability in node.models.get(self.model, ())

    def remove(self, node_id: str) -> None:
        old = self.keys.pop(node_id, None)
        if old is None:
            return
        entry, region = old
        del self.entries[bisect.bisect_left(self.entries, entry)]
        bucket = self.by_region[region]
        del bucket[bisect.bisect_left(bucket, entry)]
        if not bucket:
            del self.by_region[region]

    def put(self, node: NodeInfo, base: float) -> None:
        self.remove(node.node_id)
        entry = (-base, node.seq, node)
        self.keys[node.node_id] = (entry, node.region)
        bisect.insort(self.entries, entry)
        bisect.insort(self.by_region.setdefault(node.region, []), entry)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(a: int, b: int) -> int:
    """splitmix64 finaliser of a ^ b: the rendezvous weight (same in every process)."""
    z = a ^ b
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


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
        self._rng = random.Random(self.config.seed)
        self._rr: dict[str, int] = {}
        self._node_hash: dict[str, int] = {}
        self._synthetic: dict[str, NodeHealth] = {}
        self._set_policy(policy)
        catalog.add_listener(self._on_catalog)
        health.add_listener(self._on_health)

    # -- policy and index maintenance ---------------------------------------------

    def _set_policy(self, policy: Policy | None) -> None:
        if policy is None:
            policy = CompositePolicy.enterprise_default()
        elif not isinstance(policy, CompositePolicy):
            policy = CompositePolicy([policy])
        self.policy: CompositePolicy = policy
        # The members are snapshot here: mutate a composite before handing it over.
        members = policy.policies
        self._n = len(members)
        self._scorers = tuple(p.score for p in members)
        self._base_scorers = tuple(p.score for p in members if p.kind is not PolicyKind.DYNAMIC)
        self._checks = tuple(
            p.is_eligible for p in members if type(p).is_eligible is not Policy.is_eligible
        )
        self._variants = tuple(p.variant for p in members if p.kind is PolicyKind.VARIANT)
        self._bounds = tuple(p.bounds for p in members if p.kind is PolicyKind.DYNAMIC)
        self._orderings: dict[tuple[str, str | None, tuple[Hashable, ...]], _Ordering] = {}
        self._by_cap: dict[str, list[_Ordering]] = {}
        self._memberships: dict[str, list[_Ordering]] = {}

    def with_policy(self, policy: Policy) -> Router:
        """Replace the policy (drops the orderings; they rebuild lazily)."""
        self._set_policy(policy)
        return self

    def _health_of(self, node_id: str) -> NodeHealth:
        h = self.health.get_cached_health(node_id)
        if h is None:
            h = self._synthetic.get(node_id)
            if h is None:
                h = self._synthetic[node_id] = synthetic_health(node_id)
        return h

    def _base(self, o: _Ordering, node: NodeInfo, h: NodeHealth) -> float:
        c, r = build_candidate(node, h, o.template), o.template
        base = 0.0
        for score in self._base_scorers:
            base += score(c, r)
        return base if math.isfinite(base) else -1e300

    def _total(self, c: Candidate, request: InferRequest) -> float:
        """The composite score (same arithmetic as CompositePolicy.score)."""
        if not self._n:
            return 1.0
        total = 0.0
        for score in self._scorers:
            total += score(c, request)
        return total / self._n

    def _rejection(self, c: Candidate, request: InferRequest) -> str:
        """The first member's rejection reason, or "" when every member accepts."""
        for check in self._checks:
            ok, reason = check(c, request)
            if not ok:
                return reason or "rejected"
        return ""

    def _upper_extra(self, request: InferRequest, same_region: bool) -> float | None:
        """The most the DYNAMIC members can add (None: unbounded, scan everything)."""
        hi = 0.0
        for bounds in self._bounds:
            b = bounds(request, same_region)
            if b is None:
                return None
            hi += b[1]
        return hi

    def _ordering(self, request: InferRequest) -> _Ordering:
        key = (request.capability, request.model, tuple(v(request) for v in self._variants))
        o = self._orderings.get(key)
        if o is None:
            o = _Ordering(request.capability, request.model, request)
            entries: list[_Entry] = []
            for node in self.catalog.nodes_for(request.capability, request.model):
                entry = (-self._base(o, node, self._health_of(node.node_id)), node.seq, node)
                o.keys[node.node_id] = (entry, node.region)
                entries.append(entry)
                self._memberships.setdefault(node.node_id, []).append(o)
            entries.sort()
            o.entries = entries
            for entry in entries:
                o.by_region.setdefault(entry[2].region, []).append(entry)
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
        h = self._health_of(node_id)
        for o in orderings:
            base = self._base(o, node, h)
            old = o.keys.get(node_id)
            if old is not None and old[0][0] == -base and old[0][2] is node:
                continue  # same place in this ordering: nothing to re-file
            o.put(node, base)

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
        h = self._health_of(nid)
        joined: list[_Ordering] = []
        for cap in node.capabilities:
            for o in self._by_cap.get(cap, ()):
                if o.matches(node):
                    o.put(node, self._base(o, node, h))
                    joined.append(o)
        if joined:
            self._memberships[nid] = joined

    # -- the hot path ---------------------------------------------------------------

    def _best(
        self, request: InferRequest, exclude: Collection[str], k: int
    ) -> tuple[list[Candidate], _Ordering]:
        """The k best selectable candidates, best first (bounded walk of the ordering)."""
        o = self._ordering(request)
        n, total_of, rejection = self._n, self._total, self._rejection
        min_score = self.config.min_score
        admits, health_of = self.breaker.admits, self._health_of
        region = request.qos.region
        buckets: list[tuple[list[_Entry], bool, str | None]] = []
        if region is not None and region in o.by_region:
            buckets.append((o.by_region[region], True, None))
            buckets.append((o.entries, False, region))
        else:
            buckets.append((o.entries, False, None))
        best: list[tuple[float, int, Candidate]] = []
        unhealthy = HealthState.UNHEALTHY
        for entries, same_region, skip in buckets:
            hi = self._upper_extra(request, same_region)
            for neg_base, seq, node in entries:
                if hi is not None:
                    upper = (hi - neg_base) / n + _EPS if n else 1.0
                    if upper < min_score or (len(best) >= k and upper < best[0][0]):
                        break
                nid = node.node_id
                if (
                    (skip is not None and node.region == skip)
                    or nid in exclude
                    or node.draining
                    or node.at_capacity
                    or not admits(nid)
                ):
                    continue
                h = health_of(nid)
                if h.status is unhealthy:
                    continue
                c = build_candidate(node, h, request)
                if rejection(c, request):
                    continue
                total = total_of(c, request)
                if not total >= min_score:
                    continue
                c.scores.total = total
                item = (total, -seq, c)
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item[:2] > best[0][:2]:
                    heapq.heapreplace(best, item)
        if len(best) > 1:
            best.sort(key=lambda t: (-t[0], -t[1]))
        return [t[2] for t in best], o

    def route(self, request: InferRequest, exclude: Collection[str] = ()) -> Candidate:
        """Choose a node; raises NoCapacity, AllNodesUnhealthy, PolicyViolation, Overloaded.

        A HALF_OPEN node's probe slot is taken here: the caller reports an outcome
        (breaker.record_success/record_failure) or calls breaker.release.
        """
        strategy = self.config.strategy
        if strategy is LoadBalanceStrategy.CONSISTENT_HASH:
            top, _ = self._best(request, exclude, 1 << 30)
        elif strategy is LoadBalanceStrategy.LEAST_LATENCY:
            top, _ = self._best(request, exclude, 1)
        else:
            top, _ = self._best(request, exclude, max(1, self.config.max_candidates))
        while top:
            chosen = self._pick(strategy, top, request)
            if self.breaker.try_acquire(chosen.node_id):
                return chosen
            top.remove(chosen)
        raise self._classify(request, exclude)

    def _pick(
        self, strategy: LoadBalanceStrategy, top: list[Candidate], request: InferRequest
    ) -> Candidate:
        if strategy is LoadBalanceStrategy.LEAST_LATENCY or len(top) == 1:
            return top[0]
        if strategy is LoadBalanceStrategy.ROUND_ROBIN:
            i = self._rr.get(request.capability, 0)
            self._rr[request.capability] = i + 1
            return top[i % len(top)]
        if strategy is LoadBalanceStrategy.LEAST_CONNECTIONS:
            return min(top, key=lambda c: max(c.node.in_flight, c.node.local_in_flight))
        if strategy is LoadBalanceStrategy.WEIGHTED_RANDOM:
            weights = [max(c.score, 0.0) for c in top]
            total = sum(weights)
            if total <= 0:
                return top[0]
            target = self._rng.random() * total
            cumulative = 0.0
            for c, w in zip(top, weights, strict=True):
                cumulative += w
                if cumulative >= target:
                    return c
            return top[-1]
        if strategy is LoadBalanceStrategy.POWER_OF_TWO:
            a, b = self._rng.sample(top, 2)
            return min((a, b), key=lambda c: (c.node.load, -c.score, c.node.seq))
        key = request.tenant_id or request.request_id or ""
        return max(top, key=lambda c: self.rendezvous_weight(key, c.node_id))

    def rendezvous_weight(self, key: str, node_id: str) -> int:
        """Highest-random-weight hash of (key, node): ConsistentHash picks the maximum."""
        hn = self._node_hash.get(node_id)
        if hn is None:
            if len(self._node_hash) > 1_000_000:
                self._node_hash.clear()
            hn = self._node_hash[node_id] = _hash64(node_id)
        return _mix(hn, _hash64(key))

    def _classify(self, request: InferRequest, exclude: Collection[str]) -> Exception:
        """Why nothing was selectable (the slow path, a full scan)."""
        cap = request.capability
        built, privacy_only, full = 0, True, False
        for node in self.catalog.nodes_for(cap, request.model):
            nid = node.node_id
            h = self._health_of(nid)
            if nid in exclude or not self.breaker.admits(nid) or h.status is HealthState.UNHEALTHY:
                continue
            built += 1
            c = build_candidate(node, h, request)
            rejected = self.policy.rejected_by(c, request)
            if rejected or node.draining:
                privacy_only = privacy_only and "privacy" in rejected
                continue
            privacy_only = False
            if self._total(c, request) >= self.config.min_score and node.at_capacity:
                full = True
        if built == 0:
            return NoCapacity(cap)
        if full:
            return Overloaded(f"All eligible nodes at capacity for capability: {cap}")
        if privacy_only:
            return PolicyViolation(cap)
        return AllNodesUnhealthy(cap)

    # -- explanations -----------------------------------------------------------------

    def get_candidates(self, request: InferRequest) -> list[Candidate]:
        """Every node for the request's capability/model, scored and explained, best first."""
        out: list[Candidate] = []
        named = tuple(zip([p.name for p in self.policy.policies], self._scorers, strict=True))
        n, health_of, rejection = self._n, self._health_of, self._rejection
        for node in self.catalog.nodes_for(request.capability, request.model):
            nid = node.node_id
            h = health_of(nid)
            c = build_candidate(node, h, request)
            contributions: dict[str, float] = {}
            total = 0.0
            for name, score in named:  # the same arithmetic as _total
                value = score(c, request)
                contributions[name] = value
                total += value
            c.contributions = contributions
            c.scores.total = total / n if n else 1.0
            reason = rejection(c, request)
            if node.draining:
                reason = "draining"
            elif not self.breaker.admits(nid):
                open_ = self.breaker.state(nid) is CircuitState.OPEN
                reason = "circuit open" if open_ else "circuit half-open: probe busy"
            elif h.status is HealthState.UNHEALTHY:
                reason = "unhealthy"
            elif reason:
                pass
            elif not c.scores.total >= self.config.min_score:
                reason = f"score {c.scores.total:.3f} below min_score {self.config.min_score:g}"
            elif node.at_capacity:
                reason = "at capacity"
            c.eligible = not reason
            c.reason = reason
            out.append(c)
        out.sort(key=lambda c: (not c.eligible, -c.scores.total, c.node.seq))
        return out
