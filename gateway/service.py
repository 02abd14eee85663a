"""The gateway service: wires the federation core to NATS.

Hot path, callback-driven (no task per request or per chunk):

    infer.<cap> ──▶ _on_request: decode, route, publish dispatch ─▶ fed.node.<id>.infer
                                                       reply: <inbox>.<key>.<attempt>
    <inbox>.>   ──▶ _on_reply: relay chunk/result to the caller (bytes untouched unless
                    a failover shifted seq), finish on the terminal message
    sweeper     ──▶ deadlines, first-chunk and stall timeouts, liveness pings, expiry

A failed attempt before the first chunk is retried on another node (tenacity's
backoff); after chunks were relayed, a resumable stream fails over with ``resume``.
Every accepted request is answered exactly once (``Flight.done``), before its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig
from gateway.catalog import ModelCatalog
from gateway.control import Control
from gateway.decisions import Decisions
from gateway.flight import Flight
from gateway.health import HealthChecker, HealthConfig
from gateway.membership import Membership
from gateway.outcome import Blame, busy_wait, judge_node_error, retry_after
from gateway.policies import Candidate
from gateway.retry import RetryPolicy
from gateway.router import Router
from gateway.stats import GatewayStats
from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.config import GatewayConfig
from shared.connection import RateLimitedLog
from shared.subjects import GATEWAY_QUEUE, Subjects

log = logging.getLogger("fedgate.gateway")

RESUMABLE = frozenset({"generate", "code"})
"""Capabilities whose streams can continue on another node (text continuation)."""

_UNKNOWN = {h.STATUS: "unknown"}
"""Answer to a liveness ping about a request this gateway does not hold (any more)."""

_NOT_ON_THE_WIRE = frozenset(
    {"node_draining", "node_unreachable", "node_unavailable", "circuit_open", "unavailable"}
)
"""Error kinds of nodes or the core that the contract does not define for services."""

ENVELOPE_BYTES = 4096
"""Room kept under NATS' max_payload for the dispatch around a request body."""

DEFAULT_BUSY_S = 0.05
"""How long a node that answered ``429`` without ``Retry-After`` is left alone."""

QUEUE_FULL_RETRY_AFTER_S = 1.0
"""``Retry-After`` of a ``429`` answered because the capacity queue is full."""

BUSY_BACKOFF_S = 0.1
"""First wait for busy nodes (doubling per busy answer, at most ``retry_backoff_max_s``)."""


class GatewayService:
    """One gateway process: routes ``infer.>`` requests to nodes and relays replies."""

    def __init__(
        self,
        nc: Client,
        config: GatewayConfig | None = None,
        *,
        catalog: ModelCatalog | None = None,
        health: HealthChecker | None = None,
        breaker: CircuitBreaker | None = None,
        router: Router | None = None,
        stats: GatewayStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.config = cfg = config or GatewayConfig()
        self.gateway_id = cfg.gateway_id or f"gw-{secrets.token_hex(4)}"
        self.subjects = Subjects(cfg.public_root, cfg.internal_root)
        self.clock = clock
        self.catalog = catalog if catalog is not None else ModelCatalog(clock=clock)
        if health is None:
            health = HealthChecker(_health_config(cfg), clock=clock)
        if breaker is None:
            breaker = CircuitBreaker(_breaker_config(cfg), clock=clock)
        self.health = health
        self.breaker = breaker
        self.router = (
            router
            if router is not None
            else Router(
                self.catalog, self.health, self.breaker, config=_router_config(cfg), clock=clock
            )
        )
        self.stats = stats if stats is not None else GatewayStats(clock=clock)
        self._strategy_name = self.router.config.strategy.name.lower()
        self.retry = RetryPolicy(
            cfg.max_retries, cfg.retry_backoff_initial_s, cfg.retry_backoff_max_s
        )
        self.control = Control(self)
        self.membership = Membership(
            nc,
            self.subjects,
            self.catalog,
            self.health,
            self.breaker,
            lost=self._node_lost,
            changed=self._capacity_changed,
            connected=lambda: self._connected,
            spawn=self._spawn,
        )
        self._flights: dict[str, Flight] = {}
        self._by_request_id: dict[tuple[str, str], Flight] = {}
        """In-flight requests by identity: (tenant, request id)."""
        self._waiting: deque[Flight] = deque()
        self._next_key = 0
        self._ids = random.Random(secrets.randbits(64))
        self._job_prefix = secrets.token_hex(6)
        """Job ids sent to nodes: this gateway's random prefix + the flight key."""
        """Generated request ids: 16 hex digits, as documented."""
        self._cooldown: dict[str, float] = {}
        """Node -> time before which it is not sent work (it answered 429 Retry-After)."""
        self._inbox = ""
        self._inbox_len = 0
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = True
        self._epoch = 0
        self._accepting = False
        self._idle = asyncio.Event()
        self._noisy = RateLimitedLog(log)
        self.decisions = Decisions(
            nc,
            self.subjects.decisions,
            self.gateway_id,
            publish=cfg.decisions,
            access_log=cfg.access_log,
            clock=clock,
        )
        self.failovers = 0
        self.retries = 0
        self.metrics: Any = None
        self.metrics_port: int | None = None
        """A ``gateway.metrics.GatewayMetrics`` when metrics are exported, else None."""

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to everything and start the background loops."""
        s = self.subjects
        self._inbox = self.nc.new_inbox()
        self._inbox_len = len(self._inbox) + 1
        subscribe = self.nc.subscribe
        self._subs += [
            await subscribe(self._inbox + ".>", cb=self._on_reply),
            await subscribe(s.heartbeat_all, cb=self.membership.on_heartbeat),
            await subscribe(s.leave_all, cb=self.membership.on_leave),
            await subscribe(s.cancel_all, cb=self._on_cancel),
        ]
        self._subs += await self.control.subscribe()
        await self.nc.flush()
        # Intake last: the catalog fills from heartbeats first.
        self._subs.append(await subscribe(s.infer_all, queue=GATEWAY_QUEUE, cb=self._on_request))
        await self.nc.flush()
        self._accepting = True
        telemetry.setup("fedgate-gateway")  # no-op unless OTEL_TRACES_EXPORTER is set
        if self.config.metrics_port is not None:
            from gateway.metrics import GatewayMetrics

            self.metrics = GatewayMetrics(self)
            self.metrics_port = await self.metrics.serve(
                self.config.metrics_port, self.config.http_host
            )
        self._spawn(self._sweep_loop(), "sweeper")
        self._spawn(self.membership.probe_loop(self.config.probe_interval_s), "prober")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop intake, let in-flight requests finish (bounded), then end the rest."""
        if not self._accepting and not self._subs:
            return
        self._accepting = False
        intake = self._subs[-1] if self._subs else None
        if intake is not None:
            with contextlib.suppress(Exception):
                await intake.unsubscribe()
        if self._flights:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for flight in list(self._flights.values()):
            await self._finish_error(flight, errors.Interrupted("gateway shutting down"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        await self.control.close()
        if self.metrics is not None:
            await self.metrics.close()

    def on_disconnect(self) -> None:
        """NATS connection lost: nothing seen from now on counts against a node."""
        self._connected = False
        self._epoch += 1

    def on_reconnect(self) -> None:
        """NATS connection back."""
        self._connected = True
        self._epoch += 1

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._flights)

    @property
    def queued(self) -> int:
        """Requests waiting for capacity."""
        return len(self._waiting)

    # -- intake --------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        t0 = time.perf_counter_ns()
        reply = msg.reply
        if not reply:
            return  # nobody to answer: a plain publish is not a request
        capability = self.subjects.capability_of(msg.subject)
        if capability is None:
            await self._reply_error(
                reply,
                errors.BadRequest(
                    f"bad subject {msg.subject!r}: use "
                    f"{self.subjects.public}.<capability> with [a-z0-9_-]"
                ),
                msg.headers,
            )
            return
        raw = msg.data or b"{}"
        if len(raw) > self._max_body:
            await self._reply_error(reply, self._too_large(len(raw)), msg.headers)
            return
        try:
            request = m.request_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            await self._reply_error(
                reply, errors.BadRequest(f"invalid request: {exc}"), msg.headers
            )
            return
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            await self._reply_error(
                reply, errors.BadRequest("body is not a JSON object"), msg.headers
            )
            return
        if request.stream and capability == "embed":
            await self._reply_error(
                reply,
                errors.BadRequest('embeddings do not stream: send "stream": false'),
                msg.headers,
            )
            return
        self._next_key += 1
        key = f"{self._next_key:x}"
        given = request.request_id
        request_id = given or f"{self._ids.getrandbits(64):016x}"
        ident = (request.tenant_id or "", request_id)
        digest = hashlib.blake2b(raw, digest_size=16).digest() if given else b""
        held = self._by_request_id.get(ident)
        if held is not None:
            await self._collision(held, msg, reply, digest)
            return
        request = msgspec.structs.replace(request, capability=capability)
        now = self.clock()
        timeout_s = (
            request.timeout_ms / 1000 if request.timeout_ms else self.config.request_timeout_s
        )
        flight = Flight(
            key=key,
            request_id=request_id,
            capability=capability,
            request=request,
            raw=raw,
            reply=reply,
            started=now,
            deadline=now + timeout_s,
            poison_after=self.config.poison_after_nodes,
        )
        flight.ident = ident
        flight.job_id = self._job_prefix + key
        flight.digest = digest
        flight.inbox = f"{self._inbox}.{key}."
        flight.caller_probe = flight.inbox + "c"
        if msg.headers and h.TRACEPARENT in msg.headers:
            flight.trace_headers = {
                k: v for k, v in msg.headers.items() if k in (h.TRACEPARENT, h.TRACESTATE)
            }
        if telemetry.enabled:
            flight.span = telemetry.start(
                "process infer",
                kind=telemetry.CONSUMER,
                headers=msg.headers,
                attributes={
                    **telemetry.messaging(msg.subject, "process"),
                    "fed.request_id": request_id,
                    "fed.capability": capability,
                    "fed.gateway": self.gateway_id,
                },
            )
        self._flights[flight.key] = flight
        self._by_request_id[ident] = flight
        if msg.headers and h.ACK in msg.headers:
            await self._ack(flight)
        self.stats.record_request(request.tenant_id)
        if request.stream:
            self.stats.stream_started()
        await self._dispatch(flight)
        flight.overhead_ns += time.perf_counter_ns() - t0

    async def _collision(self, held: Flight, msg: Msg, reply: str, digest: bytes) -> None:
        """A request whose (tenant, request id) is already in flight here.

        Only the same caller resending the same bytes (``Fed-Ack``: its ack or what we
        relayed was lost) takes the request over, on its new reply subject, with a replay
        of the chunks it may have missed. Anything else is ``409 duplicate``: another
        caller's prompt never runs as, nor receives, this one. The reply subject that lost
        the request gets a ``409 duplicate`` terminal: whoever still listens there is told
        where the answer went, and nobody waits for nothing.
        """
        if msg.headers and h.ACK in msg.headers and digest == held.digest:
            if held.reply != reply:
                moved = errors.Duplicate(
                    f"request_id {held.request_id} was resent with the same body: "
                    "the answer goes to the resending caller"
                )
                hdrs = moved.headers()
                hdrs[h.REQUEST_ID] = held.request_id
                await self._publish_reply(held.reply, b"", hdrs)
            held.reply = reply
            await self._ack(held)
            for item in held.chunk_log:  # exactly the bytes relayed, seq 1, 2, ...
                await self.nc.publish(reply, item, reply=held.caller_probe)
            return
        why = "with a different body" if msg.headers and h.ACK in msg.headers else ""
        await self._reply_error(
            reply,
            errors.Duplicate(f"request_id {held.request_id} is already in flight {why}".rstrip()),
            msg.headers,
        )

    @property
    def _max_body(self) -> int:
        """Largest request body: the config's limit, capped by the server's max_payload."""
        server = getattr(self.nc, "max_payload", 0) or 0
        if server <= ENVELOPE_BYTES:
            return self.config.max_payload_bytes
        return min(self.config.max_payload_bytes, server - ENVELOPE_BYTES)

    def _too_large(self, size: int) -> errors.PayloadTooLarge:
        limit = self._max_body
        why = (
            "the gateway's max_payload_bytes"
            if limit == self.config.max_payload_bytes
            else f"NATS max_payload minus {ENVELOPE_BYTES} bytes for the dispatch envelope"
        )
        return errors.PayloadTooLarge(
            f"request body of {size} bytes exceeds the limit of {limit} bytes ({why})"
        )

    async def _ack(self, flight: Flight) -> None:
        """Acknowledge a request (asked for with ``Fed-Ack``): who holds it, how to ping."""
        await self.nc.publish(flight.reply, b"", headers={
            h.GATEWAY: self.gateway_id,
            h.LIVENESS: flight.inbox + "a",
            h.REQUEST_ID: flight.request_id,
        })  # fmt: skip

    # -- dispatch ------------------------------------------------------------------

    async def _dispatch(self, flight: Flight, resume: m.Resume | None = None) -> bool:
        """Route and send the next attempt, or finish with the routing error.

        Returns False when the flight waits (or keeps waiting) in the capacity queue.
        """
        route_span = None
        if flight.span is not None:
            route_span = telemetry.start(
                "route",
                parent=flight.span,
                attributes={"fed.capability": flight.capability, "fed.excluded": len(flight.tried)},
            )
        exclude: Any = flight.tried
        if self._cooldown:
            exclude = self._cooling(exclude)
        try:
            candidate = self.router.route(flight.request, exclude=exclude)
        except errors.FedError as exc:
            if route_span is not None:
                telemetry.end_error(route_span, exc.message)
            return await self._routing_failed(flight, exc, resume)
        if route_span is not None:
            route_span.set_attributes(
                {"fed.node_id": candidate.node_id, "fed.score": candidate.score}
            )
            route_span.end()
        await self._send(flight, candidate, resume)
        return True

    def _cooling(self, tried: list[str]) -> set[str]:
        """``tried`` plus the nodes inside their Retry-After (expired entries pruned)."""
        now = self.clock()
        out = set(tried)
        for node_id, until in list(self._cooldown.items()):
            if until > now:
                out.add(node_id)
            else:
                del self._cooldown[node_id]
        return out

    async def _routing_failed(
        self, flight: Flight, exc: errors.FedError, resume: m.Resume | None
    ) -> bool:
        """No node now: wait for busy nodes or capacity, or answer the error."""
        if self._cooldown and not flight.busy_nodes and not flight.seq:
            # Nodes inside a Retry-After were left out: they are busy, not gone.
            now = self.clock()
            flight.busy_nodes = [
                n.node_id
                for n in self.catalog.nodes_for(flight.capability, flight.request.model)
                if self._cooldown.get(n.node_id, 0.0) > now and n.node_id not in flight.tried
            ]
            flight.tried.extend(flight.busy_nodes)
        if flight.busy_nodes and not flight.seq:
            # Every node left refused for lack of capacity: wait for the first one's
            # Retry-After, within the retry budget and the deadline, or answer 429 now.
            now = self.clock()
            ready_at = min(self._cooldown.get(n, now) for n in flight.busy_nodes)
            wait = busy_wait(
                now, flight.deadline, flight.attempt, self.config.max_retries, flight.busy,
                ready_at, BUSY_BACKOFF_S, self.config.retry_backoff_max_s,
            )  # fmt: skip
            if wait is not None:
                for node_id in flight.busy_nodes:
                    flight.tried.remove(node_id)
                flight.busy_nodes.clear()
                self._spawn(self._retry_later(flight, wait), "busy-retry")
                return True
            spent = flight.attempt > self.config.max_retries
            await self._finish_error(
                flight,
                errors.Overloaded(
                    f"every eligible node for {flight.capability} is busy"
                    + (" and the retry budget is spent" if spent
                       else "; the wait would pass the request's deadline"),
                    retry_after_s=retry_after(now, ready_at),
                ),
            )  # fmt: skip
            return True
        if isinstance(exc, errors.Overloaded):
            if flight.queued_at is not None:
                return False  # stays queued; tried again when capacity frees
            if len(self._waiting) < self.config.max_queue and resume is None:
                flight.queued_at = self.clock()
                self._waiting.append(flight)
                return False
            if exc.retry_after_s is None:  # the queue is full: a hint for backing off
                exc.retry_after_s = QUEUE_FULL_RETRY_AFTER_S
            await self._finish_error(flight, exc)
            return True
        model = flight.request.model
        if (
            isinstance(exc, errors.NoCapacity)
            and model
            and not self.catalog.nodes_for(flight.capability, model)
        ):
            exc = errors.NoCapacity(
                flight.capability,
                f"No nodes available for capability: {flight.capability} with model {model!r}",
            )
        elif isinstance(exc, errors.NoCapacity) and self.catalog.nodes_for(
            flight.capability, model
        ):
            # The core keeps the reference's split (skipped nodes count as none); on the
            # wire, nodes that exist but are unhealthy or circuit-open are a 503.
            exc = errors.AllNodesUnhealthy(
                flight.capability,
                f"All nodes unhealthy for capability: {flight.capability} "
                "(every node serving it is unhealthy, circuit-open or already tried)",
            )
        await self._finish_error(flight, self._final_error(flight, exc))
        return True

    async def _send(self, flight: Flight, candidate: Candidate, resume: m.Resume | None) -> None:
        """Publish the next attempt's dispatch to the chosen node."""
        node = candidate.node
        node_id = node.node_id
        flight.queued_at = None
        flight.attempt += 1
        flight.tried.append(node_id)
        flight.node_id = node_id
        flight.score = candidate.score
        flight.reason = self._strategy_name
        flight.attempt_open = True
        flight.epoch = self._epoch
        now = self.clock()
        flight.attempt_started = now
        flight.first_chunk_at = None
        flight.last_activity = now
        flight.pinged = False
        flight.offset = flight.seq
        flight.tag = str(flight.attempt)
        self.catalog.add_in_flight(node_id, 1)
        self.stats.record_dispatch(node_id)
        remaining_ms = max(1, int((flight.deadline - now) * 1000))
        body = b"".join((
            b'{"request":', flight.raw,
            b',"attempt":', flight.tag.encode(),
            b',"resume":', m.encode(resume) if resume is not None else b"null",
            b',"capability":"', flight.capability.encode(),
            b'","request_id":"', flight.request_id.encode(),
            b'","timeout_ms":', str(remaining_ms).encode(),
            b',"job_id":"', flight.job_id.encode(), b'"}',
        ))  # fmt: skip
        subject = self.subjects.node_infer(node_id)
        headers = flight.trace_headers
        if flight.span is not None:
            span = flight.attempt_span = telemetry.start(
                "send infer",
                kind=telemetry.PRODUCER,
                parent=flight.span,
                attributes={
                    **telemetry.messaging(subject, "publish"),
                    "fed.node_id": node_id,
                    "fed.region": node.region,
                    "fed.attempt": flight.attempt,
                    "fed.score": candidate.score,
                    "fed.failover": resume is not None,
                },
            )
            headers = telemetry.inject(span, headers)
        try:
            await self.nc.publish(
                subject, body, reply=f"{flight.inbox}{flight.tag}", headers=headers
            )
        except Exception as exc:  # disconnected with a full buffer, closed, ...
            await self._attempt_failed(
                flight, blame=False, error=errors.Internal(f"dispatch failed: {exc}")
            )

    def _final_error(self, flight: Flight, routing_error: errors.FedError) -> errors.FedError:
        """The error to answer when no further node can be tried."""
        if flight.attempt == 0 or flight.last_error is None:
            return routing_error
        code, kind, text = flight.last_error
        if kind == "timeout" or self.clock() >= flight.deadline:
            return errors.Timeout(detail=text)
        if flight.seq:
            return errors.Interrupted(f"stream lost its node after {flight.seq} chunks: {text}")
        if kind == "overloaded":
            return errors.Overloaded(text)
        if kind in _NOT_ON_THE_WIRE:
            return errors.AllNodesUnhealthy(flight.capability, text)
        err = errors.from_headers({h.FED_ERROR: kind, h.ERROR_CODE: str(code), h.ERROR: text})
        return err or errors.Internal(text)

    # -- relay ---------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        t0 = time.perf_counter_ns()
        key, _, tag = msg.subject[self._inbox_len :].partition(".")
        if tag == "a":  # a caller asking whether this gateway still holds its request
            if msg.reply:
                known = key in self._flights
                await self.nc.publish(msg.reply, b"", headers=None if known else _UNKNOWN)
            return
        flight = self._flights.get(key)
        if flight is None:
            return  # late message of a finished request
        if tag != flight.tag:
            await self._on_side_reply(flight, tag, msg)
            return
        if not flight.attempt_open:
            return  # the attempt was already given up (timed out, stalled): ignore its rest
        hdrs = msg.headers
        data = msg.data
        if hdrs:
            if hdrs.get(h.NATS_STATUS) == "503":
                await self._attempt_failed(
                    flight,
                    blame=True,
                    error=errors.NodeUnreachable(flight.node_id or ""),
                )
                return
            kind = hdrs.get(h.FED_ERROR)
            if kind is not None or h.ERROR_CODE in hdrs:
                await self._node_error(flight, hdrs)
                return
        now = self.clock()
        flight.last_activity = now
        flight.pinged = False
        if flight.first_chunk_at is None:
            flight.first_chunk_at = now
        if not flight.request.stream:
            if data:
                await self._finish_ok(flight, data, hdrs)
            return
        if not data:  # terminal message of a stream
            await self._finish_ok(flight, b"", hdrs)
            return
        expected = flight.seq - flight.offset + 1  # the node numbers its chunks from 1
        if flight.offset:
            chunk = m.chunk_decoder.decode(data)
            if chunk.seq != expected:
                await self._chunk_lost(flight, expected, chunk.seq)
                return
            flight.seq += 1
            data = m.encode(msgspec.structs.replace(chunk, seq=flight.seq))  # extras kept
            flight.chunk_log.append(data)
        else:
            seq = _node_seq(data)
            if seq != expected:
                await self._chunk_lost(flight, expected, seq)
                return
            flight.seq += 1
            flight.chunk_log.append(data)
        await self.nc.publish(flight.reply, data, reply=flight.caller_probe)
        flight.overhead_ns += time.perf_counter_ns() - t0

    async def _chunk_lost(self, flight: Flight, expected: int, got: int) -> None:
        """A gap in the node's numbering (a message lost in transit, e.g. a NATS server
        died): continue from what the caller has, on another node, without the gap."""
        await self._attempt_failed(
            flight,
            blame=False,
            error=errors.Interrupted(f"chunk {expected} from {flight.node_id} lost (got {got})"),
        )

    async def _on_side_reply(self, flight: Flight, tag: str, msg: Msg) -> None:
        status = msg.headers.get(h.NATS_STATUS) if msg.headers else None
        if tag == "c":  # caller-gone probe on a relayed chunk
            if status == "503":
                await self._caller_gone(flight)
        elif tag == f"p{flight.attempt}" and status == "503" and flight.attempt_open:
            # liveness ping: the node is gone
            await self._attempt_failed(
                flight,
                blame=True,
                error=errors.NodeUnreachable(flight.node_id or ""),
            )

    async def _node_error(self, flight: Flight, hdrs: dict[str, str]) -> None:
        """The node answered an error: blame it, the caller, or nobody (errors.blame)."""
        kind = hdrs.get(h.FED_ERROR, "internal")
        code_text = hdrs.get(h.ERROR_CODE, "500")
        code = int(code_text) if code_text.isdigit() else 500
        text = hdrs.get(h.ERROR, kind)
        verdict = judge_node_error(kind, code, flight.deadline - self.clock())
        err = errors.from_headers(hdrs) or errors.Internal(text)
        if not verdict.retry_elsewhere:  # the caller's own request is at fault
            self._release(flight, success=None)
            await self._finish_error(flight, err)
            return
        if verdict.busy and flight.node_id is not None:
            ra = hdrs.get(h.RETRY_AFTER, "")
            busy_s = float(ra) if ra.replace(".", "", 1).isdigit() else DEFAULT_BUSY_S
            self._cooldown[flight.node_id] = self.clock() + min(busy_s, 3600.0)
        await self._attempt_failed(
            flight, blame=verdict.blame, error=err, code=code, kind=kind, node_reported=True
        )

    async def _attempt_failed(
        self,
        flight: Flight,
        *,
        blame: Blame | bool,
        error: errors.FedError,
        code: int | None = None,
        kind: str | None = None,
        node_reported: bool = False,
    ) -> None:
        """The current attempt failed: retry, fail over, or answer the error.

        ``blame`` says whether it counts against the node: at once (``NOW`` or True: the
        node is gone, silent or misconfigured), when the request ends unless it proves to
        be poison (``DEFERRED``: an error the node reported), or not at all.
        ``node_reported`` means the node itself sent the error (nothing to cancel there).
        Every dispatch, busy answers included, spends the one retry budget.
        """
        if flight.done:
            return
        if blame is True:
            blame = Blame.NOW
        elif blame is False:
            blame = Blame.NONE
        node_id = flight.node_id
        fair = self._connected and flight.epoch == self._epoch
        self._release(flight, success=False if blame is Blame.NOW and fair else None)
        if node_id is not None and not node_reported:
            # Timed out, stalled or gone: make sure a slow node stops working for nobody.
            self._cancel_on_node(node_id, flight.request_id, flight.job_id)
        flight.last_error = (code or error.code, kind or error.kind, error.message)
        if node_id is not None and flight.blame.record(node_id, blame, counted=fair):
            # Failed the same way on several nodes: the request, not the fleet.
            await self._finish_error(flight, self._final_error(flight, error))
            return
        remaining = flight.deadline - self.clock()
        if flight.seq:
            if flight.capability not in RESUMABLE:
                await self._finish_error(
                    flight,
                    errors.Interrupted(
                        f"{flight.capability} streams cannot resume: {error.message}"
                    ),
                )
                return
            if remaining <= 0:
                await self._finish_error(flight, errors.Timeout(detail=error.message))
                return
            if flight.attempt > self.config.max_retries:
                await self._finish_error(flight, errors.Interrupted(error.message))
                return
            text, tokens, tools = flight.relayed()
            if tools:
                await self._finish_error(
                    flight,
                    errors.Interrupted(
                        f"a stream that relayed tool calls cannot resume: {error.message}"
                    ),
                )
                return
            self.failovers += 1
            flight.failovers += 1
            await self._dispatch(flight, m.Resume(text=text, tokens=tokens))
            return
        if kind == "overloaded" and node_id is not None:
            # The node is full with other work: not its fault. Try the others first; if
            # none can take it, wait for the busy ones (see _routing_failed).
            flight.busy += 1
            flight.busy_nodes.append(node_id)
        delay = self.retry.next_delay(flight.attempt, remaining)
        if delay is None:
            final = self._final_error(flight, error)
            if isinstance(final, errors.Overloaded) and node_id in self._cooldown:
                final.retry_after_s = retry_after(self.clock(), self._cooldown[node_id])
            await self._finish_error(flight, final)
            return
        self.retries += 1
        if delay <= 0.001:
            await self._dispatch(flight)
        else:
            self._spawn(self._retry_later(flight, delay), "retry")

    async def _retry_later(self, flight: Flight, delay: float) -> None:
        await asyncio.sleep(delay)
        if not flight.done:
            await self._dispatch(flight)

    def _release(self, flight: Flight, success: bool | None, tokens: int = 0) -> None:
        """End the current attempt's hold on its node; report the outcome if any
        (``tokens``: output tokens of a successful attempt)."""
        node_id = flight.node_id
        if node_id is None or not flight.attempt_open:
            return
        flight.attempt_open = False
        self.catalog.add_in_flight(node_id, -1)
        span = flight.attempt_span
        if span is not None:
            flight.attempt_span = None
            if success:
                span.end()
            else:
                telemetry.end_error(span, "attempt failed" if success is False else "abandoned")
        if success is None:
            self.breaker.release(node_id)
        elif success:
            now = self.clock()
            ttft = None
            if flight.request.stream and flight.first_chunk_at is not None:
                ttft = flight.first_chunk_at - flight.attempt_started
            self.health.report_success(node_id, now - flight.attempt_started, tokens, ttft_s=ttft)
            self.breaker.record_success(node_id)
        else:
            self.health.report_failure(node_id)
            self.breaker.record_failure(node_id)
        if self._waiting:
            self._spawn(self._drain_waiting(), "drain-queue")

    async def _drain_waiting(self) -> None:
        """Dispatch queued requests, oldest first, while nodes have capacity."""
        while self._waiting:
            flight = self._waiting[0]
            if flight.done or flight.queued_at is None:
                self._waiting.popleft()
                continue
            if not await self._dispatch(flight):
                return

    def _cancel_on_node(self, node_id: str, request_id: str, job_id: str = "") -> None:
        body = m.encode(m.CancelNode(request_id=request_id, job_id=job_id))
        self._spawn(self.nc.publish(self.subjects.node_cancel(node_id), body), "cancel")

    # -- finishing -----------------------------------------------------------------

    async def _finish_ok(
        self, flight: Flight, data: bytes, node_headers: dict[str, str] | None
    ) -> None:
        t0 = time.perf_counter_ns()
        if flight.done:
            return
        node_headers = node_headers or {}
        tokens_text = node_headers.get(h.TOKENS, "")
        if flight.request.stream and flight.failovers:
            # After a failover the caller's total is what it received, whatever the
            # last node counted (it may or may not include ``resume.tokens``).
            tokens = flight.relayed()[1]
        elif tokens_text.isdigit():
            tokens = int(tokens_text)
        elif data:  # a node that does not send Fed-Tokens: read the result
            tokens = _result_tokens(data)
        else:
            tokens = 0
        self._release(flight, success=True, tokens=tokens)
        served_by = flight.node_id or ""
        hdrs = {
            h.SERVED_BY: served_by,
            h.ATTEMPTS: str(flight.attempt),
            h.OVERHEAD_US: str((flight.overhead_ns + time.perf_counter_ns() - t0) // 1000),
            h.REQUEST_ID: flight.request_id,
        }
        if flight.request.stream:
            hdrs[h.STATUS] = "ok"
            hdrs[h.TOKENS] = str(tokens)
            hdrs[h.FINISH_REASON] = node_headers.get(h.FINISH_REASON, "stop")
            for name, value in node_headers.items():  # additions a node sends (usage, ...)
                if name.startswith("Fed-") and name not in hdrs:
                    hdrs[name] = value
        if flight.trace_headers:
            hdrs.update(flight.trace_headers)
        self._forget(flight, tokens=tokens)
        await self._publish_reply(flight.reply, data, hdrs)
        elapsed = self.clock() - flight.started
        self.stats.record_success(elapsed, tokens, served_by, flight.request.tenant_id)
        if self.metrics is not None:
            self.metrics.finished(flight, "ok", elapsed, tokens)
        self.decisions.record(flight, "ok")

    async def _finish_error(self, flight: Flight, error: errors.FedError) -> None:
        if flight.done:
            return
        self._release(flight, success=None)
        self._forget(flight, error=error.message)
        hdrs = error.headers()
        hdrs[h.ATTEMPTS] = str(flight.attempt)
        hdrs[h.REQUEST_ID] = flight.request_id
        if flight.node_id:
            hdrs[h.SERVED_BY] = flight.node_id
        if flight.trace_headers:
            hdrs.update(flight.trace_headers)
        await self._publish_reply(flight.reply, b"", hdrs)
        self.stats.record_failure(flight.node_id, flight.request.tenant_id)
        if self.metrics is not None:
            self.metrics.finished(flight, error.kind, self.clock() - flight.started, 0)
        self.decisions.record(flight, error.kind)

    def _forget(self, flight: Flight, error: str | None = None, tokens: int = 0) -> None:
        span = flight.span
        if span is not None:
            flight.span = None
            ttft = flight.first_chunk_at
            span.set_attributes({
                "fed.node_id": flight.node_id or "",
                "fed.attempts": flight.attempt,
                "fed.tokens": tokens,
                "fed.ttft_ms": round((ttft - flight.started) * 1000, 3) if ttft else -1.0,
            })  # fmt: skip
            if error is None:
                span.end()
            else:
                telemetry.end_error(span, error)
        flight.done = True
        if flight.blame.pending:  # not poison after all: the nodes' errors were theirs
            for node_id in flight.blame.settle():
                self.health.report_failure(node_id)
                self.breaker.record_failure(node_id)
        if flight.queued_at is not None:
            flight.queued_at = None
            with contextlib.suppress(ValueError):
                self._waiting.remove(flight)
        self._flights.pop(flight.key, None)
        if self._by_request_id.get(flight.ident) is flight:
            del self._by_request_id[flight.ident]
        if not self._flights:
            self._idle.set()
        if flight.request.stream:
            self.stats.stream_ended()

    async def _publish_reply(self, reply: str, data: bytes, hdrs: dict[str, str]) -> None:
        try:
            await self.nc.publish(reply, data, headers=hdrs)
        except Exception as exc:
            self._noisy.warning("reply", "could not answer %s: %s", reply, exc)

    async def _reply_error(
        self, reply: str, error: errors.FedError, caller_headers: dict[str, str] | None = None
    ) -> None:
        hdrs = error.headers()
        if caller_headers:
            for name in (h.TRACEPARENT, h.TRACESTATE):
                value = caller_headers.get(name)
                if value is not None:
                    hdrs[name] = value
        await self._publish_reply(reply, b"", hdrs)

    # -- cancel, caller gone -------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        """``fed.cancel.<request_id>``, body empty or ``{"tenant_id": ...}``: the request
        of that caller only (an empty body names the requests sent without a tenant)."""
        tenant = ""
        if msg.data:
            try:
                tenant = m.cancel_request_decoder.decode(msg.data).tenant_id or ""
            except msgspec.DecodeError:
                return
        flight = self._by_request_id.get((tenant, self.subjects.last_token(msg.subject)))
        if flight is None or flight.done:
            return
        if flight.node_id is not None and flight.attempt_open:
            self._cancel_on_node(flight.node_id, flight.request_id, flight.job_id)
        await self._finish_error(flight, errors.Cancelled("cancelled by the caller"))

    async def _caller_gone(self, flight: Flight) -> None:
        if flight.done:
            return
        if flight.node_id is not None and flight.attempt_open:
            self._cancel_on_node(flight.node_id, flight.request_id, flight.job_id)
        self._release(flight, success=None)
        self._forget(flight, error="caller gone")
        self.stats.record_failure(flight.node_id, flight.request.tenant_id)
        if self.metrics is not None:
            self.metrics.finished(flight, "caller_gone", self.clock() - flight.started, 0)
        self.decisions.record(flight, "caller_gone")

    # -- nodes lost --------------------------------------------------------------

    async def _node_lost(self, node_id: str) -> None:
        """A node left, fell silent or restarted: move the work it held elsewhere."""
        for flight in [
            f for f in self._flights.values() if f.node_id == node_id and f.attempt_open
        ]:
            await self._attempt_failed(
                flight,
                blame=False,
                error=errors.NodeUnreachable(node_id),
            )

    async def _capacity_changed(self) -> None:
        if self._waiting:
            await self._drain_waiting()

    # -- background loops ----------------------------------------------------------

    async def _sweep_loop(self) -> None:
        tick = min(0.05, self.config.liveness_probe_s / 2)
        last_expiry = self.clock()
        while True:
            await asyncio.sleep(tick)
            try:
                self.health.flush()
                await self._sweep()
                await self.decisions.flush()
                now = self.clock()
                if now - last_expiry >= 0.5:
                    last_expiry = now
                    await self.membership.expire()
            except Exception:
                log.exception("sweeper error")

    async def _sweep(self) -> None:
        now = self.clock()
        cfg = self.config
        for flight in list(self._flights.values()):
            if flight.done:
                continue
            if now >= flight.deadline:
                if flight.node_id and flight.attempt_open:
                    self._cancel_on_node(flight.node_id, flight.request_id, flight.job_id)
                timeout_s = flight.deadline - flight.started
                await self._finish_error(flight, errors.Timeout(timeout_s))
                continue
            if flight.queued_at is not None or not flight.attempt_open:
                continue
            if flight.first_chunk_at is None:
                if now - flight.attempt_started >= cfg.first_chunk_timeout_s:
                    await self._attempt_failed(
                        flight,
                        blame=True,
                        error=errors.Timeout(
                            detail=f"no answer from {flight.node_id} within "
                            f"{cfg.first_chunk_timeout_s:g}s"
                        ),
                    )
                    continue
            elif now - flight.last_activity >= cfg.stall_timeout_s:
                await self._attempt_failed(
                    flight,
                    blame=True,
                    error=errors.Timeout(
                        detail=f"{flight.node_id} stalled for {cfg.stall_timeout_s:g}s"
                    ),
                )
                continue
            if not flight.pinged and now - flight.last_activity >= cfg.liveness_probe_s:
                flight.pinged = True
                await self.nc.publish(
                    self.subjects.node_ping(flight.node_id or ""),
                    b"",
                    reply=f"{flight.inbox}p{flight.tag}",
                )


def _node_seq(data: bytes) -> int:
    """The ``seq`` of a node's chunk; fast for our own workers' field order."""
    if data.startswith(b'{"seq":'):
        end = data.find(b",", 7)
        if end > 7 and data[7:end].isdigit():
            return int(data[7:end])
    try:
        return m.chunk_decoder.decode(data).seq
    except msgspec.DecodeError:
        return -1


class _Tokens(msgspec.Struct):
    tokens: int = 0


_tokens_decoder = msgspec.json.Decoder(_Tokens)


def _result_tokens(data: bytes) -> int:
    """The ``tokens`` of a node's result (the rest of it is forwarded untouched)."""
    try:
        return _tokens_decoder.decode(data).tokens
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return 0


def _health_config(cfg: GatewayConfig) -> HealthConfig:
    return HealthConfig(
        failure_threshold=cfg.health_failure_threshold,
        recovery_threshold=cfg.health_recovery_threshold,
        degraded_latency_s=cfg.health_degraded_latency_s,
        check_interval_s=cfg.health_check_interval_s,
        # Successes that change no state reach the router at most every 50 ms per node.
        publish_interval_s=0.05,
    )


def _breaker_config(cfg: GatewayConfig) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(
        failure_threshold=cfg.breaker_failure_threshold,
        reset_timeout_s=cfg.breaker_reset_timeout_s,
        half_open_successes=cfg.breaker_half_open_successes,
        half_open_max_probes=cfg.breaker_half_open_probes,
    )


def _router_config(cfg: GatewayConfig) -> Any:
    from gateway.router import LoadBalanceStrategy, RouterConfig

    try:
        strategy = LoadBalanceStrategy[cfg.strategy.upper()]
    except KeyError as exc:
        names = ", ".join(s.name.lower() for s in LoadBalanceStrategy)
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {names}") from exc
    return RouterConfig(strategy=strategy)
