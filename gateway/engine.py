"""The engine: carries out the request lifecycle's decisions for every flight it holds.

    admit ──▶ _run(ROUTE) ──▶ _attempt: route, send ──▶ (the node's messages: gateway/relay.py)
                 ▲                │ no node now: lifecycle.after_routing_error
                 │                ▼
                 └──── the loop in _run: ROUTE/Failover/Retry(0) route again;
                       Retry(d)/WaitBusy(d) wait in a timer task; Enqueue joins the
                       capacity queue; Finish answers the error

Every event ends in ``failed`` (an attempt ended without an answer: ``_fail`` releases
the node and asks ``lifecycle.after_failure``), ``finish_ok``/``finish_error`` (the one
answer), ``caller_gone`` or ``cancel``; the callbacks (gateway/handlers.py,
gateway/relay.py, gateway/sweeper.py, gateway/local.py) only call these. Decisions come
from the pure core (gateway/core/), messages from ``gateway.wire``, observations go to
``gateway.recorder``. The answers (``finish_ok``, ``finish_error``, ``cancel``,
``caller_gone``) and the close of a flight are ``gateway.answers.Answers``, a mixin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway.answers import Answers, ClaimHooks
from gateway.core import steps
from gateway.core.cooldown import Cooldowns
from gateway.core.flight import ATTEMPT, DONE, NEW, QUEUED, Flight
from gateway.core.lifecycle import Lifecycle
from gateway.core.steps import ROUTE, Failure, Step
from gateway.core.table import FlightTable
from gateway.fleet import Fleet
from gateway.limits import max_tokens
from gateway.outcome import Blame
from gateway.quota import Limiter
from gateway.recorder import Recorder
from gateway.wire import Wire, direct_reply, dispatch_body, trace_of
from shared import errors
from shared import messages as m
from shared.headers import TRACEPARENT

Spawn = Callable[[Any, str], None]
"""Runs a coroutine as a task owned by the service's task group."""


class Engine(Answers):
    """Holds every accepted request of one gateway until it is answered exactly once."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        wire: Wire,
        recorder: Recorder,
        lifecycle: Lifecycle,
        table: FlightTable,
        request_timeout_s: float,
        spawn: Spawn,
        clock: Callable[[], float],
        direct: bool = True,
    ) -> None:
        self.fleet = fleet
        self.wire = wire
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.spawn = spawn
        self.clock = clock
        self.request_timeout_s = request_timeout_s
        self.direct = direct
        """Ask nodes to answer NATS callers directly (docs/protocol.md, "Direct replies")."""
        self.table = table
        self.inbox = table.inbox
        """Prefix of every flight's reply subjects (``<inbox>.<key>.<tag>``)."""
        self.flights = table.flights
        self.by_ident = table.by_ident
        self.waiting = table.waiting
        """The capacity queue (gateway/core/fairqueue.py: fair share, or oldest first)."""
        self.cooldowns = Cooldowns()
        self.limiter: Limiter | None = None
        """Tenant limits (gateway/quota.py), set by the service when any are configured."""
        self.claims: ClaimHooks | None = None
        """Request identity across gateways (gateway/idempotency.py), set by the service."""
        self.idle = asyncio.Event()
        """Set whenever no request is held."""
        self.connected = True
        self.epoch = 0
        """Bumped at each disconnect and reconnect: attempts across one blame nobody."""

    # -- the connection ------------------------------------------------------------------

    def link(self, connected: bool) -> None:
        """The NATS connection went down or came back."""
        self.connected = connected
        self.epoch += 1

    # -- intake --------------------------------------------------------------------------

    async def admit(
        self,
        request: m.InferRequest,
        raw: bytes,
        request_id: str,
        reply: str = "",
        digest: bytes = b"",
        headers: dict[str, str] | None = None,
        subject: str = "",
        ack: bool = False,
        sink: Any = None,
        job_id: str = "",
    ) -> Flight:
        """Accept a decoded request (its capability set, its identity free) and start it.

        The caller is a NATS ``reply`` subject or an in-process ``sink`` queue; ``job_id``:
        the one its claim across gateways registered (default: the table's).
        """
        t0 = time.perf_counter_ns()
        ticket = None
        if self.limiter is not None:  # raises RateLimited (429) before anything is held
            prompt = len(request.input.encode())  # a chat's text travels once, in input
            ticket = await self.limiter.admit(request.tenant_id or "", prompt, max_tokens(request))
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms else self.request_timeout_s
        flight = self.table.open(request, raw, request_id, reply, self.clock(), timeout_s, digest)
        flight.sink = sink
        if job_id:
            flight.job_id = job_id
        flight.t0_ns = t0
        flight.ticket = ticket
        if headers and TRACEPARENT in headers:
            flight.trace_headers = trace_of(headers)
        self.recorder.accepted(flight, subject, headers)
        if ack:
            await self.wire.ack(flight)
        waiting = self.waiting
        if len(waiting) < self.lifecycle.limits.max_queue and waiting.held_back(
            flight, flight.started
        ):  # fair share: others wait for the same nodes, here or elsewhere: behind them
            self.table.enqueue(flight, flight.started)
            await self.drain()
            return flight
        step = await self._attempt(flight, None)  # the first step is always a Route
        if step is not None:
            await self._run(flight, step)
        return flight

    # -- the loop ------------------------------------------------------------------------

    async def _run(self, flight: Flight, step: Step | None) -> None:
        """Carry out ``step`` and those that follow, until the flight waits for an event
        (a node's answer, a timer, capacity) or is answered."""
        while step is not None and flight.phase is not DONE:
            match step:
                case steps.Route():
                    step = await self._attempt(flight, None)
                case steps.Failover(resume=resume):
                    self.recorder.failovers += 1
                    step = await self._attempt(flight, resume)
                case steps.Retry(delay_s=delay):
                    self.recorder.retries += 1
                    if delay > 0.001:
                        self.spawn(self._later(flight, delay), "retry")
                        return
                    step = await self._attempt(flight, None)
                case steps.WaitBusy(delay_s=delay):
                    self.spawn(self._later(flight, delay), "busy-retry")
                    return
                case steps.Enqueue():
                    self.table.enqueue(flight, self.clock())
                    return
                case steps.Stay():
                    return
                case steps.Finish(error=error):
                    await self.finish_error(flight, error)
                    return

    async def _later(self, flight: Flight, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._run(flight, ROUTE)

    async def _attempt(self, flight: Flight, resume: m.Resume | None) -> Step | None:
        """Route and send the next attempt; the next step when that cannot be done now."""
        span = None if flight.span is None else self.recorder.routing(flight)
        exclude: Any = flight.tried
        if self.cooldowns:
            exclude = self.cooldowns.exclude(exclude, self.clock())
        try:
            candidate = self.fleet.route(flight.request, exclude)
        except errors.FedError as exc:
            if span is not None:
                self.recorder.unrouted(span, exc)

            def serving() -> list[str]:
                return self.fleet.serving(flight.capability, flight.request.model)

            return self.lifecycle.after_routing_error(
                flight, exc, self.clock(), self.cooldowns, serving,
                len(self.waiting), resume is not None,
            )  # fmt: skip
        node = candidate.node
        if span is not None:
            self.recorder.routed(span, node.node_id, candidate.score)
        now = self.clock()
        fresh = flight.phase is NEW
        attempt = flight.start_attempt(node.node_id, candidate.score, now, self.epoch)
        if node.engine is not None or flight.late:
            attempt.first_chunk_s = self.lifecycle.first_chunk_limit(flight, node.engine, now)
        self.fleet.hold(node.node_id)
        self.waiting.charge(flight, now)  # fair share: its tenant's estimate, once
        subject = self.wire.subjects.node_infer(node.node_id)
        failover = resume is not None
        headers = self.recorder.dispatched(flight, attempt, node.region, subject, failover)
        direct = b""  # a NATS caller: the node answers it itself, relay.py reads copies
        if self.direct and flight.sink is None and flight.reply:
            direct = direct_reply(flight, attempt, fresh)
        remaining_ms = max(1, int((flight.deadline - now) * 1000))
        body = dispatch_body(flight, attempt, resume, remaining_ms, direct)
        try:
            await self.wire.dispatch(subject, flight, attempt, body, headers)
        except Exception as exc:  # disconnected with a full buffer, closed, ...
            failure = Failure(errors.Internal(f"dispatch failed: {exc}"), Blame.NONE)
            return await self._fail(flight, failure)
        return None

    # -- attempts end ------------------------------------------------------------------------

    async def failed(self, flight: Flight, failure: Failure) -> None:
        """The current attempt ended without an answer: retry, fail over, or answer."""
        if flight.phase is not DONE:
            await self._run(flight, await self._fail(flight, failure))

    async def _fail(self, flight: Flight, failure: Failure) -> Step:
        attempt = flight.current
        fair = self.connected and attempt is not None and attempt.epoch == self.epoch
        self.release(flight, success=False if failure.blame is Blame.NOW and fair else None)
        if attempt is not None and not failure.node_reported:
            # Timed out, stalled or gone: make sure a slow node stops working for nobody.
            await self.wire.cancel(attempt.node_id, flight)
        return self.lifecycle.after_failure(flight, failure, self.clock(), self.cooldowns, fair)

    def release(
        self,
        flight: Flight,
        success: bool | None,
        tokens: int = 0,
        decode_s: float | None = None,
    ) -> None:
        """End the current attempt's hold on its node; report the outcome if any
        (``success`` None: abandoned; ``tokens``: output of a successful attempt;
        ``decode_s``: a result's decode phase as the node timed it, ``answered``)."""
        if flight.phase is not ATTEMPT:
            return
        attempt = flight.end_attempt()
        if attempt is None:
            return
        if attempt.span is not None:
            self.recorder.attempt_ended(attempt, success)
        self.fleet.release(attempt, success, self.clock(), tokens, flight.request.stream, decode_s)
        if self.waiting:
            self.spawn(self.drain(contended=False), "drain-queue")

    # -- the capacity queue ----------------------------------------------------------------

    async def drain(self, contended: bool = True) -> None:
        """Dispatch queued requests while nodes have capacity: by fair share (held back
        for a tenant waiting at another gateway), or oldest first (``contended`` False:
        the slot was freed here, not seen free in other gateways' figures)."""
        waiting = self.waiting
        while waiting:
            flight = waiting.pop(self.clock(), contended)
            if flight is None:
                return
            if flight.phase is not QUEUED:
                continue
            step = await self._attempt(flight, None)
            if isinstance(step, steps.Stay):
                waiting.appendleft(flight)  # no await since the pop: its place is intact
                return
            if step is not None:  # out of the queue for good (a busy wait, an error): a
                flight.dequeue()  # QUEUED flight outside the queue would wait for nothing
                await self._run(flight, step)

    async def node_lost(self, node_id: str) -> None:
        """A node left, fell silent or restarted: move the work it held elsewhere."""
        held = [f for f in self.flights.values() if f.node_id == node_id]
        for flight in held:
            if flight.phase is ATTEMPT and flight.node_id == node_id:
                await self.failed(flight, Failure(errors.NodeUnreachable(node_id), Blame.NONE))

    async def capacity_changed(self) -> None:
        """A heartbeat may have freed capacity: try the queue."""
        if self.waiting:
            await self.drain()
