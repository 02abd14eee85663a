"""One accepted request while the gateway holds it, and its attempts: plain state.

A flight lives from the moment a request is accepted until it is answered exactly once
(``Phase.DONE``). Its phases, and the methods that move between them:

    NEW ──start_attempt──▶ ATTEMPT ──end_attempt──▶ BETWEEN ──start_attempt──▶ ATTEMPT …
     │                                                 │
     └──────────────enqueue──▶ QUEUED ◀──enqueue───────┘   (every eligible node full)
    QUEUED ──dequeue──▶ BETWEEN   (taken from the queue to wait elsewhere: a busy node)
    any phase ──finish──▶ DONE

An ``Attempt`` is one dispatch to one node: while the flight is in ``ATTEMPT`` it holds
that node (a slot of its capacity); the last attempt stays readable after it ended (the
node that answered, or the last one tried).
"""

from __future__ import annotations

import enum
from typing import Any

from gateway.outcome import BlameLedger
from shared import messages as m


class Phase(enum.Enum):
    """Where a flight is in its lifecycle."""

    NEW = 0
    """Accepted, not dispatched yet."""
    ATTEMPT = 1
    """An attempt holds a node: dispatched, not ended."""
    BETWEEN = 2
    """Between two attempts (a retry's backoff, a wait for busy nodes)."""
    QUEUED = 3
    """Waiting in the gateway's capacity queue."""
    DONE = 4
    """Answered (or its caller is gone): nothing more happens."""


NEW, ATTEMPT, BETWEEN, QUEUED, DONE = Phase
"""The phases as module constants: ``Phase.X`` is a slow lookup on an Enum class in
Python 3.11, and phases are compared on every message of the hot path."""


class Attempt:
    """One dispatch of a flight to one node."""

    __slots__ = (
        "direct",
        "dtag",
        "epoch",
        "first_chunk_at",
        "first_chunk_s",
        "last_activity",
        "node_id",
        "number",
        "offset",
        "pinged",
        "score",
        "span",
        "started",
        "tag",
    )

    def __init__(
        self, number: int, node_id: str, score: float, started: float, offset: int, epoch: int
    ) -> None:
        self.number = number
        """Dispatch number (1 = first)."""
        self.tag = str(number)
        """The last token of this attempt's reply subject."""
        self.node_id = node_id
        self.score = score
        self.started = started
        self.first_chunk_at: float | None = None
        """When the node's first chunk (or whole reply) arrived (None: not yet)."""
        self.first_chunk_s = 0.0
        """How long the node may take to that first chunk, seconds (0: the configured
        ``first_chunk_timeout_s``; set at dispatch from the node's own record)."""
        self.last_activity = started
        self.pinged = 0.0
        """When the last liveness ping since the last activity went out (0: none)."""
        self.offset = offset
        """Caller seq of the chunk before this attempt's first one."""
        self.epoch = epoch
        """The gateway's connection epoch at dispatch (an outage in between blames nobody)."""
        self.span: Any = None
        """The ``send infer`` span (only when tracing is on)."""
        self.direct = ""
        """The caller's subject the node was asked to answer directly ("" = relayed)."""
        self.dtag = "d" + self.tag
        """The last token of the subject where a direct node sends the gateway copies."""


class Flight:
    """State of one request at this gateway."""

    __slots__ = (
        "attempts",
        "blame",
        "busy",
        "busy_nodes",
        "caller_probe",
        "capability",
        "chunk_log",
        "current",
        "deadline",
        "digest",
        "failovers",
        "gapped",
        "ident",
        "inbox",
        "job_id",
        "key",
        "last_error",
        "late",
        "overhead_ns",
        "phase",
        "prompt_tokens",
        "queued_at",
        "raw",
        "reply",
        "request",
        "request_id",
        "seq",
        "sink",
        "span",
        "started",
        "t0_ns",
        "ticket",
        "trace_headers",
        "tried",
    )

    def __init__(
        self,
        key: str,
        request_id: str,
        capability: str,
        request: m.InferRequest,
        raw: bytes,
        reply: str,
        started: float,
        deadline: float,
        poison_after: int = 2,
        tenant: str = "",
        job_id: str = "",
        digest: bytes = b"",
        inbox: str = "",
    ) -> None:
        self.key = key
        self.request_id = request_id
        self.capability = capability
        self.request = request
        self.raw = raw
        """The service's request body, forwarded to nodes untouched."""
        self.reply = reply
        """The caller's reply subject (NATS callers)."""
        self.sink: Any = None
        """A caller inside this process: its queue of ``(data, headers)``, else None."""
        self.started = started
        self.deadline = deadline
        self.ident = (tenant, request_id)
        """(tenant, request id): the request's identity, scoped to its caller."""
        self.job_id = job_id
        """What names this request on a node (unique; sent as the dispatch's job_id)."""
        self.digest = digest
        """Digest of the caller's body: a resend is honoured only with the same bytes."""
        self.inbox = inbox
        """This flight's reply-subject prefix at the gateway (``<inbox>.<key>.``)."""
        self.caller_probe = inbox + "c"
        """Reply subject set on relayed chunks: no responders there = the caller is gone."""
        self.phase = NEW
        self.attempts = 0
        """Dispatches made so far (the current one's number)."""
        self.current: Attempt | None = None
        """The current attempt, or the last one once it ended."""
        self.tried: list[str] = []
        self.seq = 0
        """Chunks relayed to the caller so far."""
        self.chunk_log: list[bytes] = []
        """Every chunk exactly as relayed to the caller (its seq is the caller's)."""
        self.failovers = 0
        self.late = 0
        """Nodes that were late with their first chunk (``Lifecycle.first_chunk_limit``)."""
        self.gapped = False
        """A direct node's copies reached this gateway with a gap: what the caller has is
        not known here, so the stream cannot resume elsewhere."""
        self.busy = 0
        """Attempts a node refused for lack of capacity (they spend the retry budget too)."""
        self.busy_nodes: list[str] = []
        """Nodes that refused for lack of capacity since the last wait for them."""
        self.blame = BlameLedger(poison_after)
        """Failures whose blame waits for the request's end (poison detection)."""
        self.queued_at: float | None = None
        self.last_error: tuple[int, str, str] | None = None
        """(code, kind, text) of the last failed attempt."""
        self.overhead_ns = 0
        self.t0_ns = 0
        """``perf_counter_ns`` when the gateway began with the request (0: unknown)."""
        self.trace_headers: dict[str, str] | None = None
        """The caller's traceparent/tracestate, forwarded on every hop."""
        self.span: Any = None
        """The gateway's span for this request (only when tracing is on)."""
        self.ticket: Any = None
        """What it holds of its tenant's limits (a ``gateway.limits.Ticket``), or None."""
        self.prompt_tokens = 0
        """Prompt tokens as the node reported them (``Fed-Prompt-Tokens``), once known."""

    # -- reading -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Answered, or the caller is gone."""
        return self.phase is DONE

    @property
    def stream(self) -> bool:
        """Whether the caller asked for a stream."""
        return self.request.stream

    @property
    def node_id(self) -> str | None:
        """The node of the current attempt, or of the last one (None: never dispatched)."""
        current = self.current
        return None if current is None else current.node_id

    def relayed(self) -> tuple[str, int, bool]:
        """Text and token count relayed so far, and whether any chunk carried tool calls
        (decoded on demand: only a failover or the end of a failed-over stream asks)."""
        texts: list[str] = []
        tokens = 0
        tools = False
        for item in self.chunk_log:
            chunk = m.chunk_decoder.decode(item)
            texts.append(chunk.text)
            tokens += chunk.tokens
            tools = tools or bool(chunk.tool_calls)
        return "".join(texts), tokens, tools

    # -- transitions ---------------------------------------------------------------------

    def start_attempt(self, node_id: str, score: float, now: float, epoch: int) -> Attempt:
        """Dispatch number ``attempts + 1`` to ``node_id``: the flight holds that node."""
        self.attempts += 1
        self.tried.append(node_id)
        attempt = self.current = Attempt(self.attempts, node_id, score, now, self.seq, epoch)
        self.phase = ATTEMPT
        self.queued_at = None
        return attempt

    def end_attempt(self) -> Attempt | None:
        """The current attempt lets go of its node; None when no attempt held one."""
        if self.phase is not ATTEMPT:
            return None
        self.phase = BETWEEN
        return self.current

    def enqueue(self, now: float) -> None:
        """Wait in the capacity queue (since ``now``)."""
        self.phase = QUEUED
        self.queued_at = now

    def dequeue(self) -> None:
        """Taken out of the capacity queue without an attempt (it waits elsewhere now: a
        busy node's Retry-After, a timer)."""
        if self.phase is QUEUED:
            self.phase = BETWEEN
            self.queued_at = None

    def finish(self) -> None:
        """Answered (or abandoned): the flight is over."""
        self.phase = DONE
        self.queued_at = None
