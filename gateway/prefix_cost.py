"""Cache affinity against load, as a cost model (issue 14, point 2). Pure functions.

A node that holds a request's prefix skips that part of the prefill; a busy node makes
the request wait. Both are time to first token, so instead of weighting a cache score
against a load score, the scorer predicts each candidate's TTFT and prefers the lowest:

    TTFT(node) ~ W(node) + (1 - f_eff(node)) * T * c

* ``W``: the queueing delay before the request's prefill starts: the node's own
  prediction when given (``queue_s``: an engine's reported wait, a fitted TTFT model),
  else ``queue_s_per_load * load``, linear in the load (in-flight / capacity, or the
  engine's running + waiting over its capacity): the requests ahead of this one, each
  taking a share of the engine's steps, as the queue-length signals of sglang-router
  (shortest queue) and llm-d's queue scorer assume.
* ``T * c``: the prefill of the whole prompt, ``T`` tokens (estimated from bytes when the
  gateway has no tokenizer: ``bytes / bytes_per_token``) at ``c`` seconds a token;
  ``f_eff * T * c`` of it is skipped on a cache hit, ``f`` = matched blocks / request
  blocks (gateway/prefix_index.py). This is the model behind SGLang's cache-aware
  scheduling (the cached prefix is free, the rest is prefill) and llm-d's prefix-cache
  scorers (approximate and precise: score = the ratio of the prompt's blocks matched),
  here priced in seconds so it can be set against the queue.
* ``f_eff = f``, except **the overload guard**: ``f_eff = 0`` (no cache credit at all)
  when the node's load is at or above ``overload_load`` (at capacity the engine queues
  and the linear ``W`` under-estimates), or when it is out of balance with the least
  loaded candidate, ``load - min_load > balance_abs_load`` **and** ``load >
  balance_rel * min_load`` -- sglang-router's imbalance test (``balance_abs_threshold``,
  ``balance_rel_threshold``, on which it drops cache affinity for shortest queue), per
  node. The guard stops a hot prefix from herding traffic onto one node (issue 14's
  real-model run: sglang's cache-aware policy sent 76 % of the work to one llama.cpp
  server, TTFT p99 117 s).

``score = ref_s / (ref_s + TTFT)``: in (0, 1], higher is better, strictly decreasing in
the predicted TTFT, so it orders candidates as the TTFTs do: a warm idle node beats a
cold idle one (less prefill), a cold idle node beats a warm overloaded one (no credit,
more queue); the score falls with load and does not fall with the matched fraction.

Defaults (``PrefixCostModel``): ``c`` = 0.2 ms a token (5,000 tokens/s of prefill, an
8B model on one mid-range GPU; llama.cpp on CPU is 10-100x slower, which makes a hit
worth more: set it per deployment); ``queue_s_per_load`` = 1 s (TTFT a full node adds,
the slope of TTFT against load: a calibration constant the gateway can fit from its TTFT
samples); ``bytes_per_token`` = 4; ``overload_load`` = 1.0; ``balance_abs_load`` = 0.5
and ``balance_rel`` = 1.5 (sglang-router's relative default, its absolute one, 64
requests, expressed as half a node's capacity); ``ref_s`` = 1 s. The break-even: a fully
cached prompt of ``T`` tokens is worth ``T * c / queue_s_per_load`` of load (0.2 for
1,000 tokens, 1.6 for 8,000), capped by the guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixCostModel:
    """The constants of the TTFT model (units in the names; see the module docstring)."""

    prefill_s_per_token: float = 2e-4
    """``c``: seconds of prefill per uncached prompt token (1 / prefill tokens/s)."""
    queue_s_per_load: float = 1.0
    """Seconds of queueing per unit of load (load 1.0 = the node at capacity)."""
    bytes_per_token: float = 4.0
    """Prompt bytes per token, to estimate ``T`` without a tokenizer."""
    overload_load: float = 1.0
    """At or above this load a node gets no cache credit."""
    balance_abs_load: float = 0.5
    """No cache credit when this much busier than the least loaded candidate ..."""
    balance_rel: float = 1.5
    """... and more than this many times as busy (both, as sglang-router)."""
    ref_s: float = 1.0
    """Score scale: a predicted TTFT of ``ref_s`` seconds scores 0.5."""

    def __post_init__(self) -> None:
        if self.prefill_s_per_token <= 0 or self.queue_s_per_load <= 0:
            raise ValueError("prefill_s_per_token and queue_s_per_load must be positive")
        if self.bytes_per_token <= 0 or self.ref_s <= 0 or self.balance_rel < 1:
            raise ValueError("bytes_per_token, ref_s must be positive, balance_rel >= 1")


DEFAULT_COST_MODEL = PrefixCostModel()


@dataclass(frozen=True, slots=True)
class PrefixCandidate:
    """One candidate node as the scorer sees it."""

    node_id: str
    matched_fraction: float
    """Matched blocks / request blocks, 0..1 (``PrefixIndex.match``)."""
    load: float
    """In-flight / capacity (or engine running + waiting over capacity), >= 0."""
    queue_s: float | None = None
    """Predicted seconds before its prefill starts, when known; else from ``load``."""


def matched_fraction(matched_blocks: int, request_blocks: int) -> float:
    """``matched_blocks / request_blocks`` clamped to 0..1 (0 for a request of no block)."""
    if request_blocks <= 0:
        return 0.0
    return min(max(matched_blocks / request_blocks, 0.0), 1.0)


def prompt_tokens(prompt_bytes: int, model: PrefixCostModel = DEFAULT_COST_MODEL) -> float:
    """``T``, estimated from the prompt's size in bytes."""
    return max(prompt_bytes, 0) / model.bytes_per_token


def overloaded(
    load: float, min_load: float | None = None, model: PrefixCostModel = DEFAULT_COST_MODEL
) -> bool:
    """The overload guard: True when a node at ``load`` gets no cache credit, given the
    least load among the candidates (``min_load``; None: the absolute test only)."""
    if load >= model.overload_load:
        return True
    if min_load is None:
        return False
    return load - min_load > model.balance_abs_load and load > model.balance_rel * min_load


def predicted_ttft_s(
    fraction: float,
    load: float,
    tokens: float,
    model: PrefixCostModel = DEFAULT_COST_MODEL,
    *,
    min_load: float | None = None,
    queue_s: float | None = None,
) -> float:
    """Predicted TTFT in seconds of a ``tokens``-token prompt on a node holding
    ``fraction`` (0..1) of it, at ``load``: ``W + (1 - f_eff) * tokens * c``."""
    load = max(load, 0.0)
    wait = max(queue_s, 0.0) if queue_s is not None else model.queue_s_per_load * load
    credit = 0.0 if overloaded(load, min_load, model) else min(max(fraction, 0.0), 1.0)
    return wait + (1.0 - credit) * max(tokens, 0.0) * model.prefill_s_per_token


def prefix_score(
    fraction: float,
    load: float,
    tokens: float,
    model: PrefixCostModel = DEFAULT_COST_MODEL,
    *,
    min_load: float | None = None,
    queue_s: float | None = None,
) -> float:
    """``ref_s / (ref_s + predicted_ttft_s(...))``: in (0, 1], higher is better."""
    ttft = predicted_ttft_s(fraction, load, tokens, model, min_load=min_load, queue_s=queue_s)
    return model.ref_s / (model.ref_s + ttft)


def score_candidates(
    candidates: Sequence[PrefixCandidate],
    tokens: float,
    model: PrefixCostModel = DEFAULT_COST_MODEL,
) -> list[float]:
    """Each candidate's ``prefix_score``, in order, the balance guard measured against
    the least loaded of them."""
    if not candidates:
        return []
    min_load = max(min(c.load for c in candidates), 0.0)
    # prefix_score inlined (this is on the routing path): same formula, same guard
    q, c_tok, ref = model.queue_s_per_load, model.prefill_s_per_token, model.ref_s
    over, b_abs, b_rel = model.overload_load, model.balance_abs_load, model.balance_rel
    prefill = max(tokens, 0.0) * c_tok
    out: list[float] = []
    for c in candidates:
        load = c.load if c.load > 0.0 else 0.0
        wait = q * load if c.queue_s is None else max(c.queue_s, 0.0)
        if load >= over or (load - min_load > b_abs and load > b_rel * min_load):
            credit = 0.0
        else:
            credit = min(max(c.matched_fraction, 0.0), 1.0)
        out.append(ref / (ref + wait + (1.0 - credit) * prefill))
    return out
