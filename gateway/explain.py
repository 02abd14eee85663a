"""The full scans: every candidate explained (dry runs), and why nothing was selectable.

Both use the index's arithmetic (``base``/``total``/``rejection``, gateway/scorer.py), so a
dry run shows bit for bit the totals ``route()`` compares.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from gateway.breaker import CircuitState
from gateway.health import HealthState
from gateway.index import CandidateIndex
from gateway.policies import Candidate, build_candidate
from shared.errors import AllNodesUnhealthy, NoCapacity, Overloaded, PolicyViolation
from shared.messages import InferRequest


def classify(index: CandidateIndex, request: InferRequest, exclude: Collection[str]) -> Exception:
    """Why nothing was selectable (the slow path, a full scan)."""
    cap = request.capability
    built, privacy_only, full = 0, True, False
    for node in index.catalog.nodes_for(cap, request.model):
        nid = node.node_id
        h = index.health_of(nid)
        if nid in exclude or not index.breaker.admits(nid) or h.status is HealthState.UNHEALTHY:
            continue
        built += 1
        c = build_candidate(node, h, request)
        rejected = index.policy.rejected_by(c, request)
        if rejected or node.draining:
            privacy_only = privacy_only and "privacy" in rejected
            continue
        privacy_only = False
        total = index.total(c, index.base(node, h, request), request)
        if total >= index.min_score and node.at_capacity:
            full = True
    if built == 0:
        return NoCapacity(cap)
    if full:
        return Overloaded(f"All eligible nodes at capacity for capability: {cap}")
    if privacy_only:
        regions = request.qos.allowed_regions if request.qos is not None else None
        if regions is not None:  # data residency, or privacy: say which the request asked
            return PolicyViolation(
                cap,
                f"no node in the allowed regions ({', '.join(regions)}) serves {cap} "
                "with the privacy level asked",
            )
        return PolicyViolation(cap, f"no node with the privacy level asked serves {cap}")
    return AllNodesUnhealthy(cap)


def explain(index: CandidateIndex, request: InferRequest) -> list[Candidate]:
    """Every node for the request's capability/model, scored and explained, best
    first (eligible ones first; ties by catalog order)."""
    out: list[Candidate] = []
    members = index.policy.policies
    named = tuple(zip([p.name for p in members], index.dynamic, strict=True))
    scorers = tuple(p.score for p in members)
    n, min_score = index.n, index.min_score
    for node in index.catalog.nodes_for(request.capability, request.model):
        nid = node.node_id
        h = index.health_of(nid)
        c = build_candidate(node, h, request)
        contributions: dict[str, float] = {}
        base = dyn = 0.0
        for (name, dynamic), score in zip(named, scorers, strict=True):
            value = score(c, request)
            contributions[name] = value
            if dynamic:
                dyn += value
            else:
                base += value
        if not math.isfinite(base):
            base = -1e300
        c.contributions = contributions
        c.scores.total = (base + dyn) / n if n else 1.0
        reason = index.rejection(c, request)
        if node.draining:
            reason = "draining"
        elif not index.breaker.admits(nid):
            open_ = index.breaker.state(nid) is CircuitState.OPEN
            reason = "circuit open" if open_ else "circuit half-open: probe busy"
        elif h.status is HealthState.UNHEALTHY:
            reason = "unhealthy"
        elif reason:
            pass
        elif not c.scores.total >= min_score:
            reason = f"score {c.scores.total:.3f} below min_score {min_score:g}"
        elif node.at_capacity:
            reason = "at capacity"
        c.eligible = not reason
        c.reason = reason
        out.append(c)
    out.sort(key=lambda c: (not c.eligible, -c.scores.total, c.node.seq))
    return out
