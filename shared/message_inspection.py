"""Inspection (docs/observability.md): the routing ``Decision`` published on
``fed.decisions``, and the read models a gateway answers on
``fed.gateway.{nodes,stats,route.<cap>}`` (``NodesReply``, ``StatsReply``,
``RouteReply``, with ``GatewayLoad`` its live figures for ``/metrics``).

``shared.messages`` re-exports every name here.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from shared.message_base import Base
from shared.message_nodes import ModelInfo

# -- inspection --------------------------------------------------------------------


class Decision(Base, frozen=True, kw_only=True):
    """One routing decision, published on ``fed.decisions``."""

    request_id: str
    capability: str
    model: str | None
    chosen: str | None
    attempt: int
    score: float
    reason: str
    gateway: str = ""
    outcome: str = ""
    # Additions (issue 14), omitted when unset:
    cache_match: float | UnsetType = UNSET
    """Fraction of the prompt's blocks the chosen node was believed to hold, 0..1."""
    engine_load: float | UnsetType = UNSET
    """The chosen node's engine load, (running + waiting) / capacity (+ KV penalty)."""
    predicted_ttft_ms: float | UnsetType = UNSET
    """The TTFT predicted for the chosen node, ms."""


# -- inspection: read models ---------------------------------------------------------
# What a gateway answers on fed.gateway.{nodes,stats,route.<cap>} and what its metrics
# read: built from its state by gateway/views.py, decoded by anyone (the CLI). Every
# field after the identity has a default, so that replies of older gateways decode.


class NodeView(Base, frozen=True, kw_only=True):
    """One node as a gateway sees it (``fed.gateway.nodes``)."""

    node_id: str
    region: str = "default"
    models: list[ModelInfo] = []
    health: str = "unknown"
    """``unknown``, ``healthy``, ``degraded`` or ``unhealthy``."""
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    circuit: str = "closed"
    """``closed``, ``open`` or ``half_open``."""
    failures: int = 0
    in_flight: int = 0
    """max(reported, this gateway's own dispatches)."""
    capacity: int = 1
    privacy: str = "internal"
    cost: float = 0.5
    gpu: bool = False
    draining: bool = False
    labels: dict[str, str] = {}
    incarnation: str = ""
    """Current process ("" for a node registered through the API: no heartbeats)."""
    heartbeat_age_ms: float = 0.0
    """Milliseconds since the node's last heartbeat."""
    tokens_per_s: float | None = None
    tpot_p50_ms: float | UnsetType = UNSET
    """(addition) Median time per output token, ms, as this gateway measured it (absent:
    no sample). ``latency_*`` are the time to first token (docs/routing.md)."""


class NodesReply(Base, frozen=True, kw_only=True):
    """A gateway's answer on ``fed.gateway.nodes``."""

    gateway: str
    nodes: list[NodeView] = []


class PolicyWeight(Base, frozen=True, kw_only=True):
    """A routing policy and its weight."""

    name: str
    weight: float = 1.0


class GatewayLoad(Base, frozen=True, kw_only=True):
    """A gateway's live figures."""

    in_flight: int = 0
    """Requests accepted and not yet answered."""
    queued: int = 0
    """Requests waiting for capacity."""
    retries: int = 0
    """Dispatches retried on another node (before the first chunk)."""
    failovers: int = 0
    """Streams continued on another node after chunks were relayed."""


class TenantLimitView(Base, frozen=True, kw_only=True):
    """One tenant's limit at one gateway (docs/tenants.md): ``limit`` is ``concurrent``,
    ``rpm``, ``tpm`` or ``budget``; ``used`` what this gateway handed out in the current
    window (requests or tokens; slots in use for ``concurrent``); ``held`` what it holds
    of the fleet-wide allowance and has not handed out; ``refused`` its 429s so far."""

    tenant: str
    limit: str
    max: int
    used: int = 0
    held: int = 0
    refused: int = 0


class StatsReply(Base, frozen=True, kw_only=True):
    """A gateway's answer on ``fed.gateway.stats`` (latencies in integer milliseconds)."""

    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    total_tokens: int = 0
    active_streams: int = 0
    avg_latency_ms: int = 0
    p50_latency_ms: int = 0
    p99_latency_ms: int = 0
    per_node: dict[str, dict[str, int]] = {}
    per_tenant: dict[str, dict[str, int]] = {}
    uptime_s: float = 0.0
    gateway: str = ""
    strategy: str = ""
    policies: list[PolicyWeight] = []
    in_flight: int = 0
    queued: int = 0
    retries: int = 0
    failovers: int = 0
    nodes: int = 0
    healthy_nodes: int = 0
    limits: list[TenantLimitView] | msgspec.UnsetType = msgspec.UNSET
    """Tenant limits at this gateway; absent from the reply without ``tenant_limits`` (so
    the reply of a gateway without limits is byte for byte what it was)."""


class CandidateView(Base, frozen=True, kw_only=True):
    """One candidate of a dry run, with its verdict and score breakdown."""

    node_id: str
    region: str = "default"
    eligible: bool = False
    score: float = 0.0
    reason: str = ""
    """Why it was rejected ("" when eligible)."""
    scores: dict[str, float] = {}
    """The policies' inputs, 0..1."""
    contributions: dict[str, float] = {}
    """Each policy's part of ``score``."""
    health: str = "unknown"
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    load: float = 0.0
    privacy: str = "internal"
    # Additions (issue 14), omitted when unset so that older replies re-encode as they were:
    cache_match: float | UnsetType = UNSET
    """Fraction of the request's prompt blocks the node is believed to hold, 0..1."""
    running: int | UnsetType = UNSET
    """Its engine's running requests (unset: no fresh engine signals)."""
    waiting: int | UnsetType = UNSET
    """Its engine's queued requests."""
    kv_cache_usage: float | UnsetType | None = UNSET
    """Its engine's KV-cache use, 0..1."""
    engine_ttft_p50_ms: float | UnsetType | None = UNSET
    """Its engine's reported TTFT median, ms."""
    predicted_ttft_ms: float | UnsetType = UNSET
    """The TTFT the gateway predicts for this request on it, ms (gateway/prefix_cost.py)."""


class RouteReply(Base, frozen=True, kw_only=True):
    """A gateway's answer on ``fed.gateway.route.<capability>`` (a dry run)."""

    gateway: str
    capability: str = ""
    chosen: str | None = None
    """The best eligible candidate (None when none is)."""
    candidates: list[CandidateView] = []
