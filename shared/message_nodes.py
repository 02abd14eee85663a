"""What is known of the nodes (docs/protocol.md): the heartbeat a node publishes on
``fed.heartbeat.<node_id>`` (its ``ModelInfo`` and ``EngineSignals``), its ``Leave``, and
the outcomes gateways share among themselves on ``fed.outcomes`` (``OutcomeBatch``).

``shared.messages`` re-exports every name here.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from shared.message_base import Base, Privacy, ShortText, Token

# -- nodes -------------------------------------------------------------------------


class ModelInfo(Base, frozen=True, kw_only=True):
    """A model a node serves and the capabilities it serves it for."""

    model: ShortText
    capabilities: Annotated[tuple[Token, ...], Meta(max_length=64)] = ()


Quantity = Annotated[float, Meta(ge=0)]
"""A non-negative measurement (milliseconds, a count...)."""


class EngineSignals(Base, frozen=True, kw_only=True):
    """What a node's engine is doing (addition, ``Heartbeat.engine``; docs/protocol.md).

    Every field has a default, so any subset decodes. ``source`` names where
    ``running``/``waiting``/``kv_cache_usage`` were read: ``"vllm"``, ``"sglang"`` or
    ``"llamacpp"`` (the engine's Prometheus ``/metrics``), or ``"worker"`` (the worker's
    own counters: its jobs, or its in-process backend's queue). A plain string, not an
    enum: an old gateway must not drop the heartbeat of a node with a newer engine.
    The latencies are recent percentiles (a time-aged window, about the last minute):
    the engine's own histograms when it exports them, else the worker's measurements
    on the streams it relays; None when nothing was measured recently.
    """

    source: ShortText = "worker"
    running: Annotated[int, Meta(ge=0)] = 0
    """Requests the engine is generating for now (its batch)."""
    waiting: Annotated[int, Meta(ge=0)] = 0
    """Requests queued in the engine, not yet running."""
    kv_cache_usage: Annotated[float, Meta(ge=0, le=1)] | None = None
    """Fraction of the KV cache in use, 0..1 (None: the engine does not say)."""
    ttft_p50_ms: Quantity | None = None
    """Time to first token, median of the recent window, in milliseconds."""
    ttft_p90_ms: Quantity | None = None
    itl_p50_ms: Quantity | None = None
    """Inter-token latency (between two output tokens), median, in milliseconds."""
    itl_p90_ms: Quantity | None = None
    measured_at: Annotated[int, Meta(ge=0)] = 0
    """Epoch milliseconds of the reading (the last successful scrape for an engine)."""


class Heartbeat(Base, frozen=True, kw_only=True):
    """Published on ``fed.heartbeat.<node_id>`` every ``interval_ms``."""

    node_id: Token | None = None
    incarnation: ShortText
    region: ShortText = "default"
    models: Annotated[tuple[ModelInfo, ...], Meta(max_length=1024)] = ()
    capacity: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    in_flight: Annotated[int, Meta(ge=0)] = 0
    privacy: Privacy = Privacy.INTERNAL
    cost: Annotated[float, Meta(ge=0, le=1)] = 0.5
    gpu: bool = False
    labels: dict[str, str] = {}
    draining: bool = False
    interval_ms: Annotated[int, Meta(ge=10, le=3_600_000)] = 1000
    queue_depth: Annotated[int, Meta(ge=0)] = 0
    ttft_ms: Annotated[float, Meta(ge=0)] | None = None
    tokens_per_s: Annotated[float, Meta(ge=0)] | None = None
    # Extension: epoch milliseconds at process start, so that a gateway can tell an
    # older incarnation from a newer one.
    started_ms: int = 0
    # Addition: the engine's own load and latency (None: a node that does not report it).
    engine: EngineSignals | None = None


class Leave(Base, frozen=True, kw_only=True):
    """Body of ``fed.leave.<node_id>`` (may be empty)."""

    incarnation: str | None = None


# -- gateways among themselves -------------------------------------------------------


class OutcomeEvent(msgspec.Struct, frozen=True, array_like=True):
    """One attempt's or canary's outcome at one node: ``[node_id, kind, latency_s, tokens,
    ttft_s]``; ``kind`` is ``ok``, ``fail``, ``probe`` (a canary sent), ``probe_ok`` or
    ``probe_fail``; ``latency_s`` the whole attempt (s), ``tokens`` output tokens,
    ``ttft_s`` the time to the first chunk (streams; null otherwise)."""

    node_id: str
    kind: str
    latency_s: float = 0.0
    tokens: int = 0
    ttft_s: float | None = None


class OutcomeBatch(Base, frozen=True, kw_only=True):
    """What a gateway publishes on ``fed.outcomes`` (docs/protocol.md)."""

    gateway_id: str
    events: list[OutcomeEvent] = msgspec.field(default_factory=list)
