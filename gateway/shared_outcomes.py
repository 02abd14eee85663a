"""Shared outcomes: every gateway of the queue group learns every attempt's outcome.

Each gateway publishes the outcome of each attempt it made (a success with its
latency, output tokens and time to first token; a failure counted against the node)
and of each canary (started, answered, failed) on ``fed.outcomes``, a plain subject
every gateway subscribes to (not the queue group). Each applies the others' outcomes to
its own health model and circuit breakers exactly as its own, so all gateways agree:
a node failing ``threshold`` times *in total* is excluded by every gateway, and a
canary one gateway sends is not sent again by the others (they note it as theirs).

Cost on the request path: one tuple appended to a buffer. Batches are published every
``flush_s`` (10 ms) and at once after a failure, so a failure reaches the other gateways
within a few milliseconds (docs/routing.md, "Several gateways"). A gateway that misses a
batch (no JetStream here: it is at-most-once, like heartbeats) differs only until the
next outcomes; nothing is answered from them.

Wire: ``shared.messages.OutcomeBatch`` as JSON, ``{"gateway_id": ..., "events":
[[node_id, kind, latency_s, tokens, ttft_s], ...]}`` with ``kind`` one of ``ok``,
``fail``, ``probe``, ``probe_ok``, ``probe_fail`` (docs/protocol.md, "fed.outcomes").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.breaker import CircuitBreaker
from gateway.health import HealthChecker
from shared.messages import OutcomeBatch, OutcomeEvent

log = logging.getLogger("fedgate.gateway")

OK, FAIL, PROBE, PROBE_OK, PROBE_FAIL = "ok", "fail", "probe", "probe_ok", "probe_fail"
KINDS = frozenset({OK, FAIL, PROBE, PROBE_OK, PROBE_FAIL})

_decode = msgspec.json.Decoder(OutcomeBatch).decode
_encode = msgspec.json.Encoder().encode


class SharedOutcomes:
    """Publishes this gateway's outcomes and applies the other gateways'.

    ``spawn(coro, name)`` runs a publish in the service's task group. ``record`` is
    synchronous and cheap (the request path calls it)."""

    def __init__(
        self,
        nc: Client,
        subject: str,
        gateway_id: str,
        health: HealthChecker,
        breaker: CircuitBreaker,
        spawn: Callable[[Coroutine[Any, Any, Any], str], None],
        *,
        flush_s: float = 0.01,
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.gateway_id = gateway_id
        self.health = health
        self.breaker = breaker
        self.spawn = spawn
        self.flush_s = flush_s
        self.applied = 0
        """Outcomes from other gateways applied here (a figure for tests and stats)."""
        self._buffer: list[OutcomeEvent] = []
        self._scheduled = False

    # -- this gateway's outcomes -----------------------------------------------------------

    def record(
        self,
        kind: str,
        node_id: str,
        latency_s: float = 0.0,
        tokens: int = 0,
        ttft_s: float | None = None,
    ) -> None:
        """Queue one outcome for the other gateways; failures go out at once."""
        self._buffer.append(OutcomeEvent(node_id, kind, latency_s, tokens, ttft_s))
        urgent = kind in (FAIL, PROBE, PROBE_FAIL)
        if self._scheduled and not urgent:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a pure unit test): kept until flush()
            return
        if urgent:
            self._scheduled = True
            loop.call_soon(self._kick)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_later(self.flush_s, self._kick)

    def _kick(self) -> None:
        self._scheduled = False
        if self._buffer:
            self.spawn(self.flush(), "outcomes")

    async def flush(self) -> None:
        """Publish what is buffered (one message)."""
        events, self._buffer = self._buffer, []
        if not events or not self.nc.is_connected:
            return
        batch = OutcomeBatch(gateway_id=self.gateway_id, events=events)
        await self.nc.publish(self.subject, _encode(batch))

    # -- the other gateways' ---------------------------------------------------------------

    async def subscribe(self) -> Subscription:
        """Subscribe to every gateway's outcomes (this one's are skipped)."""
        return await self.nc.subscribe(self.subject, cb=self.on_batch)

    async def on_batch(self, msg: Msg) -> None:
        """Apply one batch from another gateway; a malformed one is dropped (logged)."""
        try:
            batch = _decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("dropped a malformed fed.outcomes batch: %s", exc)
            return
        if batch.gateway_id == self.gateway_id:
            return
        self.apply(batch.events)

    def apply(self, events: list[OutcomeEvent]) -> None:
        """Apply other gateways' outcomes as if they were this gateway's own."""
        health, breaker = self.health, self.breaker
        for ev in events:
            node_id, kind = ev.node_id, ev.kind
            if not health.is_registered(node_id):
                continue  # not (yet) in this gateway's catalog: nothing to judge
            if kind == OK:
                health.report_success(node_id, ev.latency_s, ev.tokens, ttft_s=ev.ttft_s)
                breaker.record_success(node_id, held=False)
            elif kind == FAIL:
                health.report_failure(node_id)
                breaker.record_failure(node_id, held=False)
            elif kind == PROBE:
                health.note_probe(node_id)  # another gateway is probing it: not us too
            elif kind == PROBE_OK:
                health.report_probe_success(node_id, latency_s=ev.latency_s or None)
            elif kind == PROBE_FAIL:
                health.report_probe_failure(node_id)
            else:
                continue
            self.applied += 1
