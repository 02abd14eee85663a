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

from collections.abc import Collection

from gateway.affinity import Affinity, AffinityConfig
from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog, NodeInfo
from gateway.clock import MONOTONIC, Clock
from gateway.explain import classify, explain
from gateway.health import HealthChecker, NodeHealth
from gateway.index import CandidateIndex
from gateway.policies import Candidate, CompositePolicy, Policy
from gateway.prefix_index import PrefixIndex
from gateway.spread import Spreader
from gateway.strategies import Chooser, LoadBalanceStrategy, RouterConfig
from shared.messages import InferRequest

__all__ = ["LoadBalanceStrategy", "Router", "RouterConfig"]

_POWER_OF_TWO = LoadBalanceStrategy.POWER_OF_TWO
_LEAST_LATENCY = LoadBalanceStrategy.LEAST_LATENCY
"""Module globals: an Enum member read through its class costs a quarter microsecond."""


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
        affinity: AffinityConfig | None = None,
    ) -> None:
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.config = config or RouterConfig()
        self._clock = clock
        self._chooser = Chooser(self.config.seed)
        self._rng = self._chooser.rng
        self._index = CandidateIndex(
            catalog, health, breaker, policy, self.config.min_score, self.config.explore_samples
        )
        self._spreader = Spreader(
            self._index, self.config, self._rng, health.get_cached_health, breaker.admits
        )
        self._spread = self._spreader.pick
        aff = affinity or AffinityConfig()
        self.prefixes = PrefixIndex(ttl_s=aff.ttl_s, max_entries=aff.max_entries)
        """What each node is believed to hold (fed by ``Fleet.route`` and fed.prefix.*)."""
        self.affinity = Affinity(catalog, self._index, self.prefixes, aff, clock, self._warm_band)
        self._rank = self.affinity.rank
        prefix_strategy = self.config.strategy in (_POWER_OF_TWO, _LEAST_LATENCY)
        self._prefix_chars = self.affinity.min_chars if aff.enabled and prefix_strategy else 1 << 62
        """Inputs this long (chars) may hold a whole block: the prefix stage runs."""

    @property
    def policy(self) -> CompositePolicy:
        """The composite policy in use."""
        return self._index.policy

    def with_policy(self, policy: Policy) -> Router:
        """Replace the policy (drops the orderings; they rebuild lazily)."""
        self._index.set_policy(policy)
        return self

    def route(self, request: InferRequest, exclude: Collection[str] = ()) -> Candidate:
        """Choose a node; raises NoCapacity, AllNodesUnhealthy, PolicyViolation, Overloaded,
        and for a request with an SLO, SloUnmet or SloUnattainable (gateway/affinity.py).

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
        ranked = None
        if top:  # the prefix/SLO stage (gateway/affinity.py), when it can change anything
            qos, prefix = request.qos, len(request.input) >= self._prefix_chars
            if prefix or qos.max_ttft_ms is not None or qos.max_itl_ms is not None:
                more = lambda: self._more(request, exclude)  # noqa: E731
                ranked = self._rank(top, request, exclude, more, prefix)
                if ranked is not None:
                    top = ranked
        while top:
            if len(top) == 1 or ranked is not None:
                chosen = top[0]
            else:
                chosen = self._chooser.pick(strategy, top, request)
            if self.breaker.try_acquire(chosen.node.node_id):
                return chosen
            top.remove(chosen)
        raise classify(index, request, exclude)

    def _more(self, request: InferRequest, exclude: Collection[str]) -> list[Candidate]:
        """The ``max_candidates`` best (the SLO stage's wider look)."""
        k = max(2, self.config.max_candidates)
        return self._index.walk(self._index.ordering(request), request, exclude, k)

    def _warm_band(self, best: Candidate) -> float:
        """How far below ``best`` a node holding the prompt may score: ``challenge``
        POWER_OF_TWO bands."""
        return self.config.challenge * self._spreader.band(best.node, best.health)

    def spread_band(self, best: NodeInfo, health: NodeHealth) -> float:
        """How far below the score of ``best`` a POWER_OF_TWO candidate may be (see
        ``Spreader.band``)."""
        return self._spreader.band(best, health)

    def rendezvous_weight(self, key: str, node_id: str) -> int:
        """Highest-random-weight hash of (key, node): ConsistentHash picks the maximum."""
        return self._chooser.rendezvous_weight(key, node_id)

    def get_candidates(self, request: InferRequest) -> list[Candidate]:
        """Every node for the request's capability/model, scored and explained, best
        first, with the prefix stage's terms (cache match, predicted TTFT)."""
        out = explain(self._index, request)
        self.affinity.annotate(out, request)
        return out
