"""One accepted request while the gateway holds it: a plain record, no behaviour.

A flight lives from the moment a request is accepted until it is answered exactly
once (``done``); the service owns every flight in one dict keyed by a short token
that is also the middle of its reply subjects.
"""

from __future__ import annotations

from typing import Any

from gateway.outcome import BlameLedger
from shared import messages as m


class Flight:
    """State of one request at this gateway."""

    __slots__ = (
        "attempt",
        "attempt_open",
        "attempt_span",
        "attempt_started",
        "blame",
        "busy",
        "busy_nodes",
        "caller_probe",
        "capability",
        "chunk_log",
        "deadline",
        "digest",
        "done",
        "epoch",
        "failovers",
        "first_chunk_at",
        "ident",
        "inbox",
        "job_id",
        "key",
        "last_activity",
        "last_error",
        "node_id",
        "offset",
        "overhead_ns",
        "pinged",
        "queued_at",
        "raw",
        "reason",
        "reply",
        "request",
        "request_id",
        "score",
        "seq",
        "span",
        "started",
        "tag",
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
    ) -> None:
        self.key = key
        self.request_id = request_id
        self.capability = capability
        self.request = request
        self.raw = raw
        """The service's request body, forwarded to nodes untouched."""
        self.reply = reply
        self.started = started
        self.deadline = deadline
        self.attempt = 0
        self.tag = "0"
        """``str(attempt)``: the last token of the current attempt's reply subject."""
        self.inbox = ""
        """This flight's reply-subject prefix at the gateway (``<inbox>.<key>.``)."""
        self.caller_probe = ""
        """Reply subject set on relayed chunks: no responders there = the caller is gone."""
        """Dispatches made so far (the current one's number)."""
        self.attempt_started = 0.0
        self.first_chunk_at: float | None = None
        """When the current attempt produced its first chunk (None: not yet)."""
        self.last_activity = started
        self.pinged = False
        self.node_id: str | None = None
        self.tried: list[str] = []
        self.seq = 0
        """Chunks relayed to the caller so far."""
        self.offset = 0
        """Caller seq of the chunk before the current attempt's first one."""
        self.chunk_log: list[bytes] = []
        """Every chunk exactly as relayed to the caller (its seq is the caller's)."""
        self.failovers = 0
        self.busy = 0
        """Attempts a node refused for lack of capacity (they spend the retry budget too)."""
        self.busy_nodes: list[str] = []
        """Nodes that refused for lack of capacity since the last wait for them."""
        self.blame = BlameLedger(poison_after)
        """Failures whose blame waits for the request's end (poison detection)."""
        self.ident: tuple[str, str] = ("", request_id)
        """(tenant, request id): the request's identity, scoped to its caller."""
        self.job_id = ""
        """What names this request on a node (unique; sent as the dispatch's job_id)."""
        self.digest = b""
        """Digest of the caller's body: a resend is honoured only with the same bytes."""
        self.epoch = 0
        self.overhead_ns = 0
        self.done = False
        self.attempt_open = False
        """True while the current attempt holds its node (dispatched, not yet ended)."""
        self.queued_at: float | None = None
        self.last_error: tuple[int, str, str] | None = None
        """(code, kind, text) of the last failed attempt."""
        self.score = 0.0
        self.reason = ""
        self.trace_headers: dict[str, str] | None = None
        """The caller's traceparent/tracestate, forwarded on every hop."""
        self.span: Any = None
        """The gateway's span for this request (only when tracing is on)."""
        self.attempt_span: Any = None

    @property
    def stream(self) -> bool:
        """Whether the caller asked for a stream."""
        return self.request.stream

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
