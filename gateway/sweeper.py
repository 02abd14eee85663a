"""The sweeper: one loop that fires what is due, every ``min(0.05, liveness_probe_s / 2)`` s.

membership.stalled  a tick more than a tick late: the event loop was blocked, the
deaf                gateway could not listen; that time is no node's silence (nor
                    an attempt's: its first-chunk and stall timers start later)
membership.expire   every 0.5 s: nodes whose heartbeats stopped
health.flush        successes batched for the router's orderings
timers              per flight (``lifecycle.due``): the deadline passed -> ``504`` and
                    the node's job cancelled; no first chunk, or a stall -> the attempt
                    failed (the node's fault); silence -> a liveness ping
decisions.flush     ``fed.decisions``, after the replies went out

Expiry comes first after a wake, with no await between the measure of the stall and the
judgement: heartbeats that arrived while the loop was blocked are still unread then
(the connection's reader runs a few loop turns later), and a node must not be dropped
for the gateway's own deafness (a blocked loop of 0.7 s with nodes heartbeating every
0.2 s dropped them all: ``404 no_capacity`` to the requests that came next).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.core.steps import DEADLINE, NO_TIMER, PING
from gateway.decisions import Decisions
from gateway.engine import Engine
from gateway.health import HealthChecker
from gateway.membership import Membership
from shared import errors

log = logging.getLogger("fedgate.gateway")

EXPIRY_S = 0.5
"""How often nodes whose heartbeats stopped are looked for."""


class Sweeper:
    """The timers of every flight, and the periodic chores of one gateway."""

    def __init__(
        self,
        engine: Engine,
        health: HealthChecker,
        decisions: Decisions,
        membership: Membership,
        liveness_probe_s: float,
    ) -> None:
        self.engine = engine
        self.health = health
        self.decisions = decisions
        self.membership = membership
        self.tick_s = min(0.05, liveness_probe_s / 2)

    async def run(self) -> None:
        """Sweep until cancelled; an error is logged and the next tick comes anyway."""
        clock, loop_time = self.engine.clock, asyncio.get_running_loop().time
        last_expiry = clock()
        tick, woke = self.tick_s, loop_time()
        while True:
            await asyncio.sleep(tick)
            # How late the loop woke us (the last tick's work included), on the clock
            # asyncio's timers keep: a fake gateway clock's jumps are no stall.
            at = loop_time()
            late, woke = at - woke - tick, at
            now = clock()
            try:
                if late > tick:
                    self.membership.stalled(late)
                    self.deaf(late)
                if now - last_expiry >= EXPIRY_S:
                    last_expiry = now
                    await self.membership.expire()
                self.health.flush()
                await self.fire()
                await self.decisions.flush()
            except Exception:
                log.exception("sweeper error")

    def deaf(self, seconds: float) -> None:
        """This gateway could not listen for ``seconds``: no attempt's silence counts it
        (its first-chunk and stall timers, and its TTFT, start that much later), or a
        blocked loop would fail over, and blame, nodes whose chunks wait unread. The
        callers' deadlines stand."""
        for flight in self.engine.flights.values():
            attempt = flight.current
            if attempt is not None:
                attempt.last_activity += seconds
                if attempt.first_chunk_at is None:
                    attempt.started += seconds

    async def fire(self) -> None:
        """Fire the timers due now: deadlines, first-chunk and stall timeouts, pings."""
        engine = self.engine
        now = engine.clock()
        due = engine.lifecycle.due
        for flight in list(engine.flights.values()):
            timer = due(flight, now)
            if timer is NO_TIMER:
                continue
            attempt = flight.current
            if timer is DEADLINE:
                await engine.stop_job(flight)
                await engine.finish_error(flight, errors.Timeout(flight.deadline - flight.started))
            elif timer is PING and attempt is not None:
                attempt.pinged = now
                await engine.wire.ping(flight, attempt)
            else:
                await engine.failed(flight, engine.lifecycle.timeout_failure(flight, timer))
