"""Wire messages of the fedgate protocol v1 (see docs/protocol.md).

Every message is a msgspec Struct on one frozen, keyword-only base. Wire Structs evolve
append-only and ignore unknown fields (rolling upgrades); field constraints reject
nonsense (negative timeouts, absurd QoS values) at decode time, which the gateway turns
into a ``400 bad_request``. Encoders and decoders are built once, at import.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

T = TypeVar("T")

# -- enums -------------------------------------------------------------------------


class Capability(enum.StrEnum):
    """Well-known capabilities; any other ``[a-z0-9_-]`` token is a custom one."""

    TRANSCRIBE = "transcribe"
    SYNTHESIZE = "synthesize"
    GENERATE = "generate"
    CODE = "code"
    EMBED = "embed"
    IMAGE_GEN = "image_gen"


class Privacy(enum.StrEnum):
    """Privacy levels, ordered: public < internal < confidential < restricted."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        """0 for public ... 3 for restricted (compare ranks, never the strings)."""
        return _PRIVACY_RANK[self]


_PRIVACY_RANK = {
    Privacy.PUBLIC: 0,
    Privacy.INTERNAL: 1,
    Privacy.CONFIDENTIAL: 2,
    Privacy.RESTRICTED: 3,
}

# -- constrained scalar types --------------------------------------------------------

RequestId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
Token = Annotated[str, Meta(pattern=r"^[^.*>\s]{1,128}$")]
Millis = Annotated[int, Meta(ge=1, le=86_400_000)]
ShortText = Annotated[str, Meta(max_length=256)]


class Base(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire message."""


# -- services: requests ------------------------------------------------------------


class QoS(Base, frozen=True, kw_only=True):
    """Quality-of-service requirements of one request."""

    max_latency_ms: Millis | None = None
    """Hard limit on a node's measured p99 latency, in milliseconds."""
    min_throughput: Annotated[float, Meta(ge=0, le=1e7)] | None = None
    """Hard minimum of a node's measured tokens/s."""
    privacy: Privacy = Privacy.INTERNAL
    prefer_gpu: bool = True
    cost_tolerance: Annotated[int, Meta(ge=0, le=100)] = 50
    """0 = cheapest ... 100 = fastest."""
    region: ShortText | None = None
    """The caller's region, for locality."""
    allowed_regions: Annotated[tuple[ShortText, ...], Meta(min_length=1, max_length=256)] | None = (
        None
    )
    """Hard data-residency constraint: only nodes in these regions."""
    max_ttft_ms: Millis | None = None
    """Time-to-first-token SLO, ms (addition): only nodes predicted to meet it are chosen;
    when none is now, ``429 slo_unmet`` with Retry-After at once, when none could even
    idle, ``503 slo_unattainable`` (docs/routing.md, "Engine signals and prefix caches")."""
    max_itl_ms: Millis | None = None
    """Inter-token latency SLO, ms (addition): only nodes whose engine reports a recent
    ITL p50 at most this (nodes that report none are not excluded)."""


DEFAULT_QOS = QoS()


ANONYMOUS_HTTP_TENANT = "http-anonymous"
"""The tenant of HTTP callers when the front door has no API keys: their request ids
live apart from untenanted NATS callers'. Reserved: over NATS it is a ``400`` (a NATS
caller cannot reach, cancel or collide with their requests)."""


class InferRequest(Base, frozen=True, kw_only=True):
    """A request body published on ``infer.<capability>``."""

    input: str = ""
    data: bytes | None = None
    """Binary input (base64 on the wire)."""
    model: ShortText | None = None
    stream: bool = False
    request_id: RequestId | None = None
    tenant_id: ShortText | None = None
    qos: QoS = DEFAULT_QOS
    params: dict[str, Any] = {}
    timeout_ms: Millis | None = None
    capability: str = ""
    """Not read from a service's body: the gateway sets it from the subject (extension)."""


class Resume(Base, frozen=True, kw_only=True):
    """Where a failed-over stream continues: the text and tokens already relayed."""

    text: str
    tokens: int


class DirectReply(Base, frozen=True, kw_only=True):
    """(addition) How a node answers the caller itself (docs/protocol.md, "Direct replies").

    A node that reads it publishes its chunks and its success answer to ``to`` (chunks
    numbered from ``seq_from + 1``, each a ``DirectChunk`` with the dispatch's attempt),
    and a copy of each, without a reply subject, to ``observe`` (copy first, then the
    caller). Errors still go to the dispatch's reply subject. A node that ignores it
    answers the dispatch's reply subject as before, and the gateway relays."""

    to: str
    """The caller's reply subject."""
    observe: str
    """Where the gateway observes: a copy of every chunk and of the success answer."""
    probe: str = ""
    """Where the node reports the caller gone: an empty message with ``Status: 503`` (the
    "no responders" NATS answers the node on its chunks once the caller's inbox is gone)."""
    seq_from: int = 0
    """Chunks the caller already has: the node's first chunk is ``seq_from + 1``."""
    headers: dict[str, str] = {}
    """Headers to put on the success answer to the caller (``Fed-Attempts``,
    ``Fed-Request-Id``, ``Fed-Overhead-Us``, the caller's trace context)."""


class Dispatch(Base, frozen=True, kw_only=True):
    """What a gateway sends to ``fed.node.<id>.infer``."""

    request: InferRequest
    attempt: int = 1
    resume: Resume | None = None
    # Extensions (additions to the v1 contract):
    capability: str = ""
    """The capability from the request subject."""
    request_id: str = ""
    """The request id, generated by the gateway when the service gave none."""
    timeout_ms: int | None = None
    """What remains of the request's deadline when the dispatch was sent."""
    job_id: str = ""
    """Unique per request at its gateway (the same on every attempt): a node keys its
    running jobs (newest dispatch wins, cancel, caller gone) by it when present, since
    two tenants may use the same ``request_id``. Subject-token safe."""
    direct: DirectReply | None = None
    """Answer the caller directly (docs/protocol.md, "Direct replies"); None: the
    dispatch's reply subject gets everything, as before."""


class Chunk(Base, frozen=True, kw_only=True):
    """One streamed chunk: ``seq`` from 1, no gap, no repeat; ``text`` is empty only in a
    chunk that carries ``tool_calls`` (or ``logprobs``) instead."""

    seq: int
    text: str
    tokens: int = 1
    # Additions (chat models, optional; absent = none):
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI tool-call deltas as the engine streamed them (``index``, ``id``, ``type``,
    ``function.name``, ``function.arguments`` pieces), to be concatenated by ``index``."""
    logprobs: dict[str, Any] | None = None
    """The engine's log-probabilities of this chunk's tokens (OpenAI's ``logprobs`` object
    of a choice: ``content`` for a chat, ``tokens``/``token_logprobs``/... for a text)."""


class DirectChunk(Chunk, frozen=True, kw_only=True):
    """(addition) A chunk a node sent the caller itself: with its dispatch's number, so
    a client drops a late chunk of an attempt the gateway gave up on."""

    attempt: int = 0
    """The dispatch that produced it (0: relayed by a gateway, or unknown)."""


class Result(Base, frozen=True, kw_only=True):
    """A non-streaming reply, written by the node and forwarded unchanged."""

    request_id: str
    model: str
    output: str
    served_by: str
    region: str
    tokens: int
    latency_ms: float
    attempt: int
    embedding: list[float] | None = None
    finish_reason: str = "stop"
    # Additions (optional; absent = none or unknown):
    prompt_tokens: int | None = None
    """Tokens in the prompt as the node's engine counted them (None = not reported)."""
    tool_calls: list[dict[str, Any]] | None = None
    """Complete OpenAI tool calls (``id``, ``type``, ``function.name``/``arguments``);
    with them ``output`` may be empty and ``finish_reason`` is ``tool_calls``."""
    logprobs: dict[str, Any] | None = None
    """The engine's log-probabilities of the output (OpenAI's ``logprobs`` object)."""


# -- workers -----------------------------------------------------------------------


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


class CancelRequest(Base, frozen=True, kw_only=True):
    """Body of ``fed.cancel.<request_id>`` (may be empty): whose request it is."""

    tenant_id: str | None = None


class CancelNode(Base, frozen=True, kw_only=True):
    """Body of ``fed.node.<node_id>.cancel``."""

    request_id: str
    job_id: str = ""
    """The dispatch's ``job_id`` (addition): when present, the job to stop."""


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


QoSRequirements = QoS
"""The reference's name for ``QoS``."""


# -- codecs, built once ------------------------------------------------------------


class SafeDecoder(Generic[T]):
    """A msgspec JSON decoder whose only errors are ``msgspec.DecodeError`` (and its
    ``ValidationError`` subclass): invalid UTF-8 inside a string and nesting too deep for
    the recursion limit surface from msgspec as other exceptions, mapped here."""

    __slots__ = ("_decode",)

    def __init__(self, type: type[T]) -> None:
        self._decode = msgspec.json.Decoder(type).decode

    def decode(self, data: bytes) -> T:
        """Decode ``data`` or raise ``msgspec.DecodeError``."""
        try:
            return self._decode(data)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise msgspec.DecodeError(f"undecodable JSON: {type(exc).__name__}") from None


encoder = msgspec.json.Encoder()
request_decoder = SafeDecoder(InferRequest)
dispatch_decoder = SafeDecoder(Dispatch)
chunk_decoder = SafeDecoder(Chunk)
direct_chunk_decoder = SafeDecoder(DirectChunk)
result_decoder = SafeDecoder(Result)
heartbeat_decoder = SafeDecoder(Heartbeat)
leave_decoder = SafeDecoder(Leave)
cancel_decoder = SafeDecoder(CancelNode)
cancel_request_decoder = SafeDecoder(CancelRequest)
decision_decoder = SafeDecoder(Decision)
nodes_reply_decoder = SafeDecoder(NodesReply)
stats_reply_decoder = SafeDecoder(StatsReply)
route_reply_decoder = SafeDecoder(RouteReply)
any_decoder: SafeDecoder[Any] = SafeDecoder(object)


def encode(msg: Any) -> bytes:
    """Encode any Struct (or plain data) to JSON bytes."""
    return encoder.encode(msg)
