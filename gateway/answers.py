"""The one answer of a flight: success, error, cancel, or a caller gone; then its close.

``Answers`` is a mixin of ``gateway.engine.Engine`` (it uses the engine's fleet, wire,
recorder, table and limiter). ``finish_ok`` answers with a node's result or success
terminal (or only records it when the node answered the caller itself: a direct
reply), ``finish_error`` with an error's contract headers; ``cancel`` answers 499,
``caller_gone`` answers nobody. Each releases the flight's node first and then
``_close``s the flight: its blame settled, its tenant's limits charged (prompt plus
output tokens), its place in every table given up, its claim across gateways (when
registered, gateway/idempotency.py) given its answer or deleted.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from gateway.core.flight import ATTEMPT, DONE, Flight
from gateway.core.verdicts import answered
from gateway.limits import prompt_tokens
from gateway.wire import error_headers, ok_headers
from shared import errors

if TYPE_CHECKING:
    import asyncio

    from gateway.core.table import FlightTable
    from gateway.fleet import Fleet
    from gateway.quota import Limiter
    from gateway.recorder import Recorder
    from gateway.wire import Wire


class ClaimHooks(Protocol):
    """The request registry as a flight's end sees it (gateway/idempotency.py)."""

    held: dict[tuple[str, str], tuple[str, int]]
    """Identities registered by this gateway's flights: (key, revision)."""

    async def finished(self, flight: Flight, data: bytes, headers: dict[str, str]) -> None:
        """``flight`` (registered) was answered: keep its answer for resends (a publish
        that does not wait for JetStream)."""

    def dropped(self, flight: Flight) -> None:
        """``flight`` ended without an answer to keep: a resend runs it again."""


class Answers:
    """The answering half of the engine (mixed into ``gateway.engine.Engine``)."""

    fleet: Fleet
    wire: Wire
    recorder: Recorder
    table: FlightTable
    flights: dict[str, Flight]
    limiter: Limiter | None
    claims: ClaimHooks | None
    idle: asyncio.Event

    if TYPE_CHECKING:

        def release(
            self,
            flight: Flight,
            success: bool | None,
            tokens: int = 0,
            decode_s: float | None = None,
        ) -> None:
            """The engine's: end the current attempt's hold on its node."""

    async def finish_ok(
        self,
        flight: Flight,
        data: bytes,
        node_headers: dict[str, str] | None,
        delivered: bool = False,
    ) -> None:
        """The node finished: answer the caller with its result or terminal message
        (``delivered``: the node answered the caller itself, direct reply)."""
        t0 = time.perf_counter_ns()
        if flight.phase is DONE:
            return
        node_headers = node_headers or {}
        tokens, decode_s = answered(flight, node_headers, data)
        if flight.ticket is not None:  # what the tenant's limits are charged
            flight.prompt_tokens = prompt_tokens(node_headers, data)
        self.release(flight, success=True, tokens=tokens, decode_s=decode_s)
        hdrs = None if delivered else ok_headers(flight, node_headers, tokens, t0)
        self._close(flight, None, tokens)
        if hdrs is not None:
            await self.wire.answer(flight, data, hdrs)
        self.recorder.answered(flight, "ok", tokens)
        claims = self.claims
        if claims is not None and flight.ident in claims.held:
            hdrs = hdrs if hdrs is not None else ok_headers(flight, node_headers, tokens, t0)
            await claims.finished(flight, data, hdrs)

    async def finish_error(self, flight: Flight, error: errors.FedError) -> None:
        """Answer the caller with ``error``."""
        if flight.phase is DONE:
            return
        self.release(flight, success=None)
        self._close(flight, error.message)
        await self.wire.answer(flight, b"", error_headers(flight, error))
        self.recorder.answered(flight, error.kind)

    async def stop_job(self, flight: Flight) -> None:
        """Tell the node of the current attempt, if one holds a node, to stop."""
        attempt = flight.current
        if attempt is not None and flight.phase is ATTEMPT:
            await self.wire.cancel(attempt.node_id, flight)

    async def cancel(self, flight: Flight) -> None:
        """The caller cancelled: stop the node's job, answer ``499``."""
        if not flight.done:
            await self.stop_job(flight)
            await self.finish_error(flight, errors.Cancelled("cancelled by the caller"))

    async def caller_gone(self, flight: Flight) -> None:
        """Nobody listens for the answer any more: stop the node's job, forget it."""
        if flight.done:
            return
        await self.stop_job(flight)
        self.release(flight, success=None)
        self._close(flight, "caller gone")
        self.recorder.answered(flight, "caller_gone")

    def _close(self, flight: Flight, error: str | None, tokens: int = 0) -> None:
        """The flight is over: settle its blame, let go of its place in every table."""
        self.recorder.closed(flight, error, tokens)
        self.table.close(flight, tokens or flight.seq)
        if error is not None and self.claims is not None:
            self.claims.dropped(flight)
        if flight.ticket is not None and self.limiter is not None:
            self.limiter.settle(flight.ticket, flight.prompt_tokens + (tokens or flight.seq))
            flight.ticket = None
        blame = flight.blame
        if blame.pending or blame.late:  # not poison after all (docs/routing.md, "Blame")
            for node_id in blame.settle(served=error is None):
                self.fleet.penalise(node_id)
        if not self.flights:
            self.idle.set()
