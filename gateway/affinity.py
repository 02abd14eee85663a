"""The router's prefix and SLO stage: cache affinity against load, and TTFT admission.

After the strategy found its candidates (POWER_OF_TWO's pick, least_latency's best...),
``Affinity.rank`` looks again at them, plus the few nodes believed to hold the longest
part of the request's prompt (``PrefixIndex``, gateway/prefix_index.py) whose score is
within ``challenge`` bands of the best, and orders them by predicted time to first token
(gateway/prefix_cost.py): ``queue_s_per_load x load + (1 - cache credit) x prefill``,
the load engine-aware (gateway/nodeinfo.py) and the credit withheld from an overloaded
node (the overload guard). It runs only when it can change something: the request has a
whole block that some node holds, or it carries an SLO (``qos.max_ttft_ms`` /
``qos.max_itl_ms``); otherwise the strategy's choice stands and the stage costs one
length test. Pure: no I/O; ``clock`` is the router's monotonic clock.

SLO rule: a candidate meets ``max_ttft_ms`` when its predicted TTFT does, that
prediction raised to the node's measured TTFT p50 (the engine's, else the gateway's own
samples) when it gets no cache credit; and ``max_itl_ms`` when its engine's ITL p50 does
(or it reports none). When none of the candidates does, the ``max_candidates`` best are
looked at too; when still none does: ``SloUnattainable`` (503) if even an idle node
could not (the uncached prefill alone is too long), else ``SloUnmet`` (429, Retry-After:
the excess of the best prediction over the SLO, at least 1 s).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from gateway.catalog import ModelCatalog
from gateway.clock import Clock
from gateway.index import CandidateIndex
from gateway.policies import Candidate
from gateway.prefix import DEFAULT_BLOCK_BYTES, block_hashes
from gateway.prefix_cost import DEFAULT_COST_MODEL, PrefixCostModel, overloaded
from gateway.prefix_index import DEFAULT_MAX_ENTRIES, DEFAULT_TTL_S, PrefixIndex
from shared.errors import SloUnattainable, SloUnmet
from shared.messages import InferRequest

MAX_TERMS = 4096
"""Most routed requests whose score terms wait for their ``fed.decisions`` entry."""


@dataclass(frozen=True, slots=True)
class AffinityConfig:
    """Settings of the prefix stage (GatewayConfig ``prefix_*``; docs/routing.md)."""

    enabled: bool = True
    """Prefix-cache-aware scoring (the SLO admission runs either way)."""
    block_bytes: int = DEFAULT_BLOCK_BYTES
    """Prompt bytes per block (every gateway of a federation must use the same)."""
    max_warm: int = 4
    """Most nodes holding the prompt's longest prefix added to the strategy's choice."""
    ttl_s: float = DEFAULT_TTL_S
    """An index entry not routed again for this long is forgotten (PrefixIndex)."""
    max_entries: int = DEFAULT_MAX_ENTRIES
    """Most (node, block) entries the index holds (~180 B each)."""
    cost: PrefixCostModel = field(default_factory=lambda: DEFAULT_COST_MODEL)


Terms = tuple[float, float | None, float | None]
"""(cache match 0..1, engine load or None, predicted TTFT ms or None): ``fed.decisions``."""

Publish = Callable[[str, list[int]], None]
"""``(node_id, block hashes)``: tell the other gateways (gateway/shared_prefix.py)."""


class Affinity:
    """The prefix/SLO stage of one router, holding its ``PrefixIndex``."""

    def __init__(
        self,
        catalog: ModelCatalog,
        index: CandidateIndex,
        prefixes: PrefixIndex,
        config: AffinityConfig,
        clock: Clock,
        band: Callable[[Candidate], float],
    ) -> None:
        """``band(best)``: how far below ``best``'s score a warm node may be (the router's
        ``challenge`` x its POWER_OF_TWO band)."""
        self.catalog = catalog
        self.index = index
        self.prefixes = prefixes
        self.config = config
        self.clock = clock
        self.band = band
        self.publish: Publish | None = None
        self.terms: dict[int, tuple[InferRequest, Terms]] = {}
        """id(request) -> (the request, its chosen node's terms), until its decision is
        written (``pop_terms``; the request is held so that its id is not reused)."""
        self.min_chars = max(1, -(-config.block_bytes // 4))
        """Inputs shorter (in chars; UTF-8 has at most 4 bytes a char) have no block."""
        self._last: tuple[InferRequest | None, list[int]] = (None, [])

    def hashes(self, request: InferRequest) -> list[int]:
        """The request's block hashes (``block_hashes(input, namespace=model)``), [] when
        disabled or shorter than a block; computed once per request object."""
        last, keys = self._last
        if request is last:
            return keys
        keys = []
        if self.config.enabled and len(request.input) >= self.min_chars:
            keys = block_hashes(
                request.input, namespace=request.model or "", block_bytes=self.config.block_bytes
            )
        self._last = (request, keys)
        return keys

    def rank(
        self,
        top: list[Candidate],
        request: InferRequest,
        exclude: Collection[str],
        more: Callable[[], list[Candidate]],
        prefix: bool = True,
    ) -> list[Candidate] | None:
        """``top`` (not empty) and warm nodes ordered by predicted TTFT, best first, only
        those meeting the request's SLO; None when the stage has nothing to change (the
        strategy's choice stands). ``prefix``: look at the cache (False: the SLO only).
        ``more()``: the wider look when no candidate meets the SLO. Raises ``SloUnmet``
        or ``SloUnattainable``."""
        qos = request.qos
        slo = qos.max_ttft_ms is not None or qos.max_itl_ms is not None
        if not slo and not prefix:
            return None
        keys = self.hashes(request) if prefix else []
        fractions: dict[str, float] = {}
        cands = top
        match = None
        if keys:
            match = self.prefixes.match(keys, self.clock())
            depth, holders = match.deepest()
            if not depth:
                match = None
            else:
                cands = list(top)
                self._add_warm(cands, holders, request, exclude)
                for c in cands:
                    fractions[c.node_id] = match.fraction(c.node_id)
        if not fractions and not slo:
            return None
        data = request.input.encode() if keys or qos.max_ttft_ms is not None else b""
        tokens = len(data) / self.config.cost.bytes_per_token
        self._predict(cands, fractions, tokens)
        if slo:
            met = [c for c in cands if self._meets(c, request)]
            if not met:
                seen = {c.node_id for c in cands}
                extra = [c for c in more() if c.node_id not in seen]
                if extra:
                    if match is not None:
                        fractions.update((c.node_id, match.fraction(c.node_id)) for c in extra)
                    cands = cands + extra
                    self._predict(cands, fractions, tokens)  # one balance guard for all
                    met = [c for c in cands if self._meets(c, request)]
            if not met:
                raise self._refusal(cands, request, tokens, fractions)
            cands = met
        return sorted(cands, key=_ttft)

    def routed(self, request: InferRequest, chosen: Candidate) -> None:
        """``chosen`` takes ``request``: record its prompt in the index, tell the other
        gateways, and keep the chosen node's terms for ``fed.decisions``."""
        keys = self.hashes(request)
        node_id = chosen.node_id
        if keys:
            self.prefixes.record(node_id, keys, self.clock())
            if self.publish is not None:
                self.publish(node_id, keys)
        s, node = chosen.scores, chosen.node
        if s.ttft_ms >= 0.0 or node.engine is not None:
            terms = self.terms
            if len(terms) >= MAX_TERMS:
                del terms[next(iter(terms))]
            ttft = round(s.ttft_ms, 1) if s.ttft_ms >= 0.0 else None
            engine = round(node.engine_load, 4) if node.engine is not None else None
            terms[id(request)] = (request, (round(s.cache, 4), engine, ttft))

    def pop_terms(self, request: InferRequest) -> Terms | None:
        """The terms ``routed`` kept for ``request`` (once): (cache match 0..1, engine
        load or None, predicted TTFT ms or None) of the node it was last routed to."""
        held = self.terms.pop(id(request), None)
        return held[1] if held is not None and held[0] is request else None

    def annotate(self, cands: list[Candidate], request: InferRequest) -> None:
        """Fill ``scores.cache`` and ``scores.ttft_ms`` of a dry run's candidates."""
        keys = self.hashes(request)
        fractions: dict[str, float] = {}
        if keys:
            match = self.prefixes.match(keys, self.clock())
            fractions = {c.node_id: match.fraction(c.node_id) for c in cands}
        tokens = len(request.input.encode()) / self.config.cost.bytes_per_token
        self._predict(cands, fractions, tokens)

    # -- internals ------------------------------------------------------------------

    def _add_warm(
        self,
        cands: list[Candidate],
        holders: list[str],
        request: InferRequest,
        exclude: Collection[str],
    ) -> None:
        """Add the nodes holding the deepest prefix that are selectable and near-best."""
        index, cap, model = self.index, request.capability, request.model
        floor = cands[0].score - self.band(cands[0]) if cands else -1.0
        seen = {c.node_id for c in cands}
        added = 0
        # The first by id: every gateway considers the same ones (nsmallest: a prefix
        # every node of a large fleet holds is not sorted whole).
        for nid in heapq.nsmallest(4 * self.config.max_warm, holders):
            if added >= self.config.max_warm:
                break
            node = self.catalog.node(nid)
            if nid in seen or node is None or cap not in node.capabilities:
                continue
            if model is not None and cap not in node.models.get(model, ()):
                continue
            h = index.health_of(nid)
            c = index.candidate(node, index.base(node, h, request), request, exclude, False, h)
            if c is not None and c.score >= floor:
                cands.append(c)
                added += 1

    def _predict(self, cands: list[Candidate], fractions: dict[str, float], tokens: float) -> None:
        """Set each candidate's ``scores.cache`` and ``scores.ttft_ms`` (the cost model,
        the balance guard against the least loaded of ``cands``)."""
        model = self.config.cost
        if not cands:
            return
        loads = [c.node.load for c in cands]
        min_load = max(min(loads), 0.0)
        prefill = tokens * model.prefill_s_per_token
        for c, load in zip(cands, loads, strict=True):
            f = fractions.get(c.node_id, 0.0)
            credit = 0.0 if overloaded(load, min_load, model) else f
            c.scores.cache = f
            c.scores.ttft_ms = 1000.0 * (model.queue_s_per_load * load + (1.0 - credit) * prefill)
            if credit == 0.0:
                measured = _measured_ttft_ms(c)
                if measured is not None and measured > c.scores.ttft_ms:
                    c.scores.ttft_ms = measured

    def _meets(self, c: Candidate, request: InferRequest) -> bool:
        qos = request.qos
        if qos.max_ttft_ms is not None and c.scores.ttft_ms > qos.max_ttft_ms:
            return False
        engine = c.node.engine
        if qos.max_itl_ms is not None and engine is not None and engine.itl_p50_ms is not None:
            return engine.itl_p50_ms <= qos.max_itl_ms
        return True

    def _refusal(
        self,
        cands: list[Candidate],
        request: InferRequest,
        tokens: float,
        fractions: dict[str, float],
    ) -> Exception:
        """Why no candidate meets the SLO: 503 when none could even idle, else 429."""
        qos, model, cap = request.qos, self.config.cost, request.capability
        prefill_ms = 1000.0 * tokens * model.prefill_s_per_token
        best_f = max((fractions.get(c.node_id, 0.0) for c in cands), default=0.0)
        if qos.max_ttft_ms is not None and (1.0 - best_f) * prefill_ms > qos.max_ttft_ms:
            return SloUnattainable(
                f"no node of {cap} could meet max_ttft_ms={qos.max_ttft_ms}: the prompt's "
                f"prefill alone is predicted at {(1.0 - best_f) * prefill_ms:.0f} ms"
            )
        best = min((c.scores.ttft_ms for c in cands), default=0.0)
        excess_s = (best - (qos.max_ttft_ms or 0)) / 1000.0 if qos.max_ttft_ms else 1.0
        asked = ", ".join(
            f"{name} {value} ms"
            for name, value in (("max_ttft_ms", qos.max_ttft_ms), ("max_itl_ms", qos.max_itl_ms))
            if value is not None
        )
        return SloUnmet(
            f"no node of {cap} is predicted to meet the request's SLO ({asked}) now: "
            f"best predicted TTFT {best:.0f} ms",
            retry_after_s=max(1.0, excess_s),
        )


def _ttft(c: Candidate) -> float:
    return c.scores.ttft_ms


def _measured_ttft_ms(c: Candidate) -> float | None:
    """The node's measured TTFT p50, ms: its engine's report, else its heartbeat's."""
    engine = c.node.engine
    if engine is not None and engine.ttft_p50_ms is not None:
        return engine.ttft_p50_ms
    return c.node.ttft_ms
