"""Load-balancing strategies: how the router chooses among the candidates it found.

The router finds the candidates (the best k by score, or for ``POWER_OF_TWO`` two random
members of the near-best band, see docs/routing.md); a ``Chooser`` picks one of them.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass

from gateway.policies import Candidate
from shared.messages import InferRequest

_M64 = (1 << 64) - 1


class LoadBalanceStrategy(enum.Enum):
    """How to choose among the best eligible candidates."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    LEAST_LATENCY = "least_latency"
    WEIGHTED_RANDOM = "weighted_random"
    CONSISTENT_HASH = "consistent_hash"
    POWER_OF_TWO = "power_of_two"


def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix64(a: int, b: int) -> int:
    """splitmix64 finaliser of a ^ b: the rendezvous weight (same in every process)."""
    z = a ^ b
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


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
    explore_samples: int = 4
    """POWER_OF_TWO: a HEALTHY node with fewer successes in a row than this is explored
    as an UNKNOWN one is: two cold-start samples cannot keep a new node out of the band
    until its idle canary (docs/routing.md)."""


class Chooser:
    """Picks one candidate per strategy; holds the random source and round-robin counters."""

    def __init__(self, seed: int | None) -> None:
        self.rng = random.Random(seed)
        self._rr: dict[str, int] = {}
        self._node_hash: dict[str, int] = {}

    def pick(
        self, strategy: LoadBalanceStrategy, top: list[Candidate], request: InferRequest
    ) -> Candidate:
        """One of ``top`` (best first; for POWER_OF_TWO in random order)."""
        if strategy is LoadBalanceStrategy.LEAST_LATENCY or len(top) == 1:
            return top[0]
        if strategy is LoadBalanceStrategy.POWER_OF_TWO:
            a, b = top[0], top[1]
            return b if b.node.load < a.node.load else a
        if strategy is LoadBalanceStrategy.ROUND_ROBIN:
            i = self._rr.get(request.capability, 0)
            self._rr[request.capability] = i + 1
            return top[i % len(top)]
        if strategy is LoadBalanceStrategy.LEAST_CONNECTIONS:
            return min(top, key=lambda c: c.node.local_in_flight + c.node.remote_in_flight)
        if strategy is LoadBalanceStrategy.WEIGHTED_RANDOM:
            return self._weighted(top)
        key = request.tenant_id or request.request_id or ""
        return max(top, key=lambda c: self.rendezvous_weight(key, c.node_id))

    def _weighted(self, top: list[Candidate]) -> Candidate:
        weights = [max(c.score, 0.0) for c in top]
        total = sum(weights)
        if total <= 0:
            return top[0]
        target = self.rng.random() * total
        cumulative = 0.0
        for c, w in zip(top, weights, strict=True):
            cumulative += w
            if cumulative >= target:
                return c
        return top[-1]

    def rendezvous_weight(self, key: str, node_id: str) -> int:
        """Highest-random-weight hash of (key, node): ConsistentHash picks the maximum."""
        hn = self._node_hash.get(node_id)
        if hn is None:
            if len(self._node_hash) > 1_000_000:
                self._node_hash.clear()
            hn = self._node_hash[node_id] = hash64(node_id)
        return mix64(hn, hash64(key))
