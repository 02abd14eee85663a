"""Configuration value objects, loaded once at the edge (CLI flags, env, TOML file).

Precedence, highest first: command-line flags, ``FEDGATE_*`` environment variables,
the TOML file given by ``--config`` (or ``FEDGATE_CONFIG``), then the defaults below.
Config Structs are strict: an unknown key in a file is an error, not a silent typo.
Secrets are masked in ``repr``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

PositiveSeconds = Annotated[float, Meta(gt=0, le=86_400)]


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the config Structs."""

    def __repr__(self) -> str:
        fields = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in _SECRET_FIELDS and value:
                value = "***"
            fields.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"


C = TypeVar("C", bound="Config")

_SECRET_FIELDS = frozenset({"password", "token", "nkey_seed"})


class NatsConfig(Config, frozen=True, kw_only=True):
    """How to reach NATS: servers and credentials (shared by every component)."""

    url: str = DEFAULT_NATS_URL
    """One URL or several separated by commas (a cluster)."""
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed: str | None = None
    """Path to an nkey seed file."""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inbox_prefix: str = "_INBOX"
    connect_timeout_s: PositiveSeconds = 2.0
    name: str | None = None

    @property
    def servers(self) -> list[str]:
        """The server URLs."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


class TenantLimits(Config, frozen=True, kw_only=True):
    """One tenant's limits, enforced by all gateways together, and its fair share of
    the nodes when requests wait for capacity (docs/tenants.md).

    A tenant is an API key's tenant over HTTP and ``tenant_id`` over NATS; ``None`` = no
    limit. Tokens are prompt + completion tokens as the node reports them."""

    max_concurrent: Annotated[int, Meta(ge=1)] | None = None
    """Requests in flight at once, across every gateway."""
    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    """Requests accepted per minute (fixed one-minute windows)."""
    tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None
    """Tokens per minute (fixed one-minute windows)."""
    token_budget: Annotated[int, Meta(ge=1)] | None = None
    """Tokens per ``budget_period_s``."""
    budget_period_s: PositiveSeconds = 86_400.0
    """The token budget's period (fixed windows from the Unix epoch)."""
    weight: Annotated[float, Meta(gt=0, le=1e6)] = 1.0
    """Fair share: the tenant's share of the nodes relative to others of its priority
    class when requests wait (2.0: twice a weight-1 tenant's tokens)."""
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    """Fair share: the tenant's priority class; a higher class's waiting requests are
    admitted first (strict priority), fair share within a class."""

    @property
    def limited(self) -> bool:
        """Whether any limit is set (weight and priority are not limits)."""
        return any(
            v is not None
            for v in (
                self.max_concurrent, self.requests_per_minute, self.tokens_per_minute,
                self.token_budget,
            )
        )  # fmt: skip


class GatewayConfig(Config, frozen=True, kw_only=True):
    """Behaviour of one gateway process."""

    gateway_id: str | None = None
    """Defaults to a random id."""
    public_root: str = "infer"
    internal_root: str = "fed"
    max_retries: Annotated[int, Meta(ge=0, le=20)] = 3
    request_timeout_s: PositiveSeconds = 30.0
    """Deadline of a request that gives no ``timeout_ms``."""
    first_chunk_timeout_s: PositiveSeconds = 10.0
    """Longest wait for a node's first chunk (or its whole non-streaming reply)."""
    stall_timeout_s: PositiveSeconds = 2.0
    """Longest silence between two chunks before the gateway fails over."""
    liveness_probe_s: PositiveSeconds = 0.25
    """Silence after which the gateway pings a streaming node to see whether it is gone."""
    retry_backoff_initial_s: Annotated[float, Meta(ge=0, le=60)] = 0.02
    retry_backoff_max_s: Annotated[float, Meta(ge=0, le=60)] = 0.5
    max_queue: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    """Requests that may wait for capacity; beyond it, ``429 overloaded`` at once."""
    max_payload_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    """Largest request body accepted; the NATS server's ``max_payload`` minus the dispatch
    envelope caps it further (a larger body is a ``400 bad_request`` naming the limit)."""
    poison_after_nodes: Annotated[int, Meta(ge=1, le=20)] = 2
    """A request whose attempts failed on this many nodes in a row with errors the nodes
    reported (5xx, internal, timeout) is poison: not retried further, and those failures
    count against no node."""
    strategy: str = "power_of_two"
    """How to choose among the best candidates (docs/routing.md, "Strategies"); power of
    two choices over latency and load spreads identical nodes evenly."""
    decisions: bool = True
    """Publish each routing decision on ``fed.decisions``."""
    share_outcomes: bool = True
    """Publish each attempt's and canary's outcome on ``fed.outcomes`` and apply the other
    gateways' to this one's health and circuits, so that all gateways agree on the fleet
    (docs/routing.md, "Several gateways")."""
    direct_replies: bool = True
    """Nodes answer NATS callers directly (the gateway observes a copy; needs nodes
    allowed to publish to callers' inboxes); off: every reply is relayed by the gateway
    (docs/protocol.md, "Direct replies")."""
    prefix_routing: bool = True
    """Prefix-cache-aware routing: prefer the node believed to hold the request's prompt
    prefix, weighed against its load by predicted TTFT, and share what was routed with
    the other gateways on ``fed.prefix.<node_id>`` (docs/routing.md, "Engine signals and
    prefix caches"). The SLO admission (``qos.max_ttft_ms``) works either way."""
    prefix_block_bytes: Annotated[int, Meta(ge=16, le=65536)] = 256
    """Prompt bytes per hashed block (~64 tokens); the same on every gateway."""
    prefix_ttl_s: PositiveSeconds = 120.0
    """A prompt not routed again for this long is assumed evicted from the engine."""
    prefix_max_entries: Annotated[int, Meta(ge=1)] = 250_000
    """Most (node, block) entries in the prefix index (~180 B each)."""
    prefix_prefill_ms_per_token: Annotated[float, Meta(gt=0, le=1000)] = 0.2
    """Predicted prefill time per uncached prompt token, ms (0.2: a GPU; CPU llama.cpp
    is 10-100x slower: set it so, a cache hit is then worth more)."""
    prefix_queue_s_per_load: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    """Predicted TTFT added per unit of load (a node at capacity), seconds."""
    access_log: bool = False
    """Log one line per request (request id, trace id, node, outcome, latency)."""
    probe_interval_s: PositiveSeconds = 2.0
    """How often the gateway asks which nodes are due a canary (a real one-token
    inference: unknown, unhealthy, degraded, idle or never-timed nodes; docs/routing.md
    "Canaries")."""
    breaker_failure_threshold: Annotated[int, Meta(ge=1)] = 5
    """Consecutive failures that open a node's circuit."""
    breaker_reset_timeout_s: PositiveSeconds = 30.0
    """How long a circuit stays open before half-open probe requests are let through."""
    breaker_half_open_successes: Annotated[int, Meta(ge=1)] = 3
    breaker_half_open_probes: Annotated[int, Meta(ge=1)] = 1
    """Concurrent probe requests allowed while half-open."""
    health_failure_threshold: Annotated[int, Meta(ge=1)] = 3
    """Consecutive failures that make a node unhealthy (no traffic until a probe answers)."""
    health_recovery_threshold: Annotated[int, Meta(ge=1)] = 2
    health_degraded_latency_s: PositiveSeconds = 1.0
    """A success slower than this marks the node degraded."""
    health_check_interval_s: PositiveSeconds = 10.0
    """Minimum time between two probes of the same unknown/unhealthy node."""
    http_port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    """Serve the OpenAI-compatible HTTP front door on this port (None = off)."""
    http_host: str = "127.0.0.1"
    api_keys: dict[str, str] = {}
    """Bearer token -> tenant id for the HTTP front door (empty = no auth)."""
    tenant_limits: dict[str, TenantLimits] = {}
    """Tenant id -> its limits; ``"*"`` applies to every tenant without an entry (the
    config file's ``[gateway.tenant_limits.<tenant>]`` tables; docs/tenants.md)."""
    fair_share: bool = True
    """Requests waiting for capacity are admitted by fair share across tenants (virtual
    token counters, per priority class; ``weight`` and ``priority`` of
    ``tenant_limits``), fleet-wide on ``fed.fair`` (docs/tenants.md, "Fair share");
    off: oldest first at each gateway."""
    limits_store: str = "kv"
    """Where gateways share tenant allowances: ``kv`` (JetStream key-value bucket
    ``fedgate_limits``; limits hold across gateways) or ``local`` (each gateway alone)."""
    idempotency: bool = True
    """Register each request that has a caller-given ``request_id`` in the JetStream
    key-value bucket ``fedgate_requests``, so that a resend through another gateway
    attaches to the running request or replays its answer instead of running it twice,
    and another caller's collision is refused there too (docs/protocol.md, "Request
    identity"); per gateway, with a warning, while JetStream does not answer."""
    idempotency_ttl_s: PositiveSeconds = 600.0
    """How long a request's identity stays registered (the bucket's ``max_age``): keep
    it above the longest request deadline in use. Set by the gateway that creates the
    bucket."""
    default_max_tokens: Annotated[int, Meta(ge=1)] = 1024
    """Completion tokens reserved against a tenant's token limits for a request that
    sets no ``max_tokens`` (the unused part is given back when it ends)."""
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    """Serve Prometheus metrics on this port (None = off)."""


class WorkerConfig(Config, frozen=True, kw_only=True):
    """Identity and limits of one worker node."""

    node_id: str
    region: str = "default"
    models: tuple[str, ...] = ("synthetic",)
    capabilities: tuple[str, ...] = ("generate",)
    capacity: Annotated[int, Meta(ge=1)] = 4
    privacy: str = "internal"
    cost: Annotated[float, Meta(ge=0, le=1)] = 0.5
    gpu: bool = False
    labels: dict[str, str] = {}
    heartbeat_interval_s: PositiveSeconds = 1.0
    drain_timeout_s: PositiveSeconds = 10.0
    public_root: str = "infer"
    internal_root: str = "fed"
    stream_interval_ms: Annotated[int, Meta(ge=0)] = 0
    """Coalesce chunks produced within this window into one message (0 = off)."""
    engine_metrics_url: str | None = None
    """Prometheus /metrics of the engine (vLLM, SGLang, llama.cpp server), read for the
    heartbeat's engine signals; default: the openai backend's upstream URL + /metrics;
    'off' = the worker's own counters only."""
    engine_metrics_interval_s: PositiveSeconds = 1.0
    """Time between two reads of the engine's /metrics (in the background)."""
    engine_metrics_timeout_s: PositiveSeconds = 0.5
    """Longest wait for one read of the engine's /metrics."""


def load_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a TOML config file (``[nats]``, ``[gateway]``, ``[worker]`` tables)."""
    if not path:
        return {}
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ValueError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc


def env_values(prefix: str, struct: type[Config]) -> dict[str, str]:
    """``FEDGATE_<PREFIX>_<FIELD>`` (and ``FEDGATE_NATS_URL`` style) values present in the env."""
    out: dict[str, str] = {}
    for name in struct.__struct_fields__:
        key = f"FEDGATE_{prefix}_{name}".upper() if prefix else f"FEDGATE_{name}".upper()
        if key in os.environ:
            out[name] = os.environ[key]
    return out


def build(struct: type[C], *layers: dict[str, Any]) -> C:
    """Merge layers (lowest precedence first, None values skipped) into a validated Struct."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    try:
        return msgspec.convert(merged, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {struct.__name__}: {exc}") from exc
