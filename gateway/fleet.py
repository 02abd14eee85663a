"""The fleet as the engine uses it: pick a node, hold one of its slots, report outcomes.

One attempt holds one slot of its node's capacity from dispatch to its end; its outcome
reaches the node's health and circuit: a success (latency, tokens, time to first
token), a failure that is the node's fault, or nothing (abandoned, not its fault, or
blamed later when the request ends: ``penalise``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.core.flight import Attempt
from gateway.health import HealthChecker
from gateway.policies import Candidate
from gateway.router import Router
from shared.messages import InferRequest

ShareOutcome = Callable[..., None]
"""``(kind, node_id, latency_s=0.0, tokens=0, ttft_s=None)``: see gateway/shared_outcomes.py."""


class Fleet:
    """Catalog, health, breakers and router, as one gateway's engine sees them."""

    __slots__ = (
        "_routed", "breaker", "catalog", "health", "held", "on_hold", "route", "router", "share",
    )  # fmt: skip

    def __init__(
        self, catalog: ModelCatalog, health: HealthChecker, breaker: CircuitBreaker, router: Router
    ) -> None:
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.router = router
        self.route: Callable[..., Candidate] = self._route
        """``route(request, exclude)``: the node for the next attempt (raises the routing
        ``FedError`` when none); its prompt is then recorded as held by that node."""
        self._routed = router.affinity.routed
        self.share: ShareOutcome | None = None
        """``SharedOutcomes.record``: tells the other gateways each outcome (None: alone)."""
        self.on_hold: Callable[[str], None] | None = None
        """Called with the node after each ``hold`` (fair share: gateway/shared_fair.py)."""
        self.held: dict[str, int] = {}
        """This gateway's own dispatches in flight, by node (what fair share tells the
        others; the catalog's in-flight count may include theirs: gateway/core/remote.py)."""

    def _route(self, request: InferRequest, exclude: Collection[str] = ()) -> Candidate:
        """``router.route``, then the choice told to the prefix index (this gateway's and,
        through ``fed.prefix.<node_id>``, every other's: gateway/shared_prefix.py)."""
        chosen = self.router.route(request, exclude)
        self._routed(request, chosen)
        return chosen

    def serving(self, capability: str, model: str | None) -> list[str]:
        """Every node serving ``capability`` (and ``model``), eligible or not."""
        return [n.node_id for n in self.catalog.nodes_for(capability, model)]

    def hold(self, node_id: str) -> None:
        """An attempt was dispatched to ``node_id``: one of its slots is taken."""
        self.catalog.add_in_flight(node_id, 1)
        self.held[node_id] = self.held.get(node_id, 0) + 1
        if self.on_hold is not None:
            self.on_hold(node_id)

    def release(
        self,
        attempt: Attempt,
        success: bool | None,
        now: float,
        tokens: int,
        stream: bool,
        decode_s: float | None = None,
    ) -> None:
        """``attempt`` let go of its node, with its outcome (None: nobody's fault). A
        success's time to first token: a stream's first chunk, as this gateway saw it; a
        result's, its latency here less ``decode_s`` (the node's time from its first token
        to its answer), so that an answer is judged per unit of work whether streamed or
        not (without it, a node that had only answered non-streaming requests stayed
        unmeasured, scored as ``UNMEASURED_MS`` beside measured peers: 46 / 154 of 200
        requests at concurrency 16 between two identical nodes). The result's first token
        is then placed there (``attempt.first_chunk_at``): the TTFT histogram and span
        attribute read it."""
        node_id = attempt.node_id
        self.catalog.add_in_flight(node_id, -1)
        left = self.held.get(node_id, 0) - 1
        if left > 0:
            self.held[node_id] = left
        else:
            self.held.pop(node_id, None)
        if success is None:
            self.breaker.release(node_id)
        elif success:
            ttft = None
            latency = now - attempt.started
            if stream:
                if attempt.first_chunk_at is not None:
                    ttft = attempt.first_chunk_at - attempt.started
            elif decode_s is not None:
                ttft = latency - decode_s if latency > decode_s else 0.0
                attempt.first_chunk_at = attempt.started + ttft  # metrics and spans too
            self.health.report_success(node_id, latency, tokens, ttft_s=ttft)
            self.breaker.record_success(node_id)
            if self.share is not None:
                self.share("ok", node_id, latency, tokens, ttft)
        else:
            self.penalise(node_id)

    def penalise(self, node_id: str) -> None:
        """A failure that is ``node_id``'s fault."""
        self.health.report_failure(node_id)
        self.breaker.record_failure(node_id)
        if self.share is not None:
            self.share("fail", node_id)
