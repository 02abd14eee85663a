"""What a gateway says about each request once it is answered: ``fed.decisions`` and the
optional access log.

Both are written after the reply, never before it: a decision is queued when a request
ends and published by the gateway's sweeper in the next tick, so that ``nats sub
fed.decisions`` shows the live stream of choices without delaying any answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from msgspec import UNSET
from nats.aio.client import Client

from gateway.core.flight import Flight
from shared import headers as h
from shared import messages as m

log = logging.getLogger("fedgate.gateway")


class Decisions:
    """Queues one ``Decision`` per ended request and publishes them in batches."""

    def __init__(
        self,
        nc: Client,
        subject: str,
        gateway_id: str,
        *,
        publish: bool = True,
        access_log: bool = False,
        clock: Callable[[], float],
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.gateway_id = gateway_id
        self.publish = publish
        self.access_log = access_log
        self._clock = clock
        self._pending: list[m.Decision] = []
        self.terms: Callable[[m.InferRequest], tuple[float, float | None, float | None] | None]
        self.terms = _none
        """request -> (cache match, engine load, predicted TTFT ms) of its chosen node
        (the router's prefix stage: ``Affinity.pop_terms``), once."""

    def record(self, flight: Flight, outcome: str, reason: str) -> None:
        """A request ended with ``outcome`` (``ok`` or its error kind); ``reason`` is the
        strategy that chose its node ("" when none was chosen)."""
        if self.access_log:
            self._log(flight, outcome)
        terms = self.terms(flight.request)
        if not self.publish:
            return
        cache, engine_load, ttft = terms if terms is not None else (UNSET, None, None)
        self._pending.append(
            m.Decision(
                request_id=flight.request_id,
                capability=flight.capability,
                model=flight.request.model,
                chosen=flight.node_id,
                attempt=flight.attempts,
                score=round(flight.current.score, 4) if flight.current is not None else 0.0,
                reason=reason,
                gateway=self.gateway_id,
                outcome=outcome,
                cache_match=cache,
                engine_load=UNSET if engine_load is None else engine_load,
                predicted_ttft_ms=UNSET if ttft is None else ttft,
            )
        )

    async def flush(self) -> None:
        """Publish what is queued (called by the sweeper, after the replies went out)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for decision in pending:
            await self.nc.publish(self.subject, m.encode(decision))

    def _log(self, flight: Flight, outcome: str) -> None:
        """One line per request, with request and trace ids."""
        trace_id = ""
        if flight.trace_headers and h.TRACEPARENT in flight.trace_headers:
            trace_id = flight.trace_headers[h.TRACEPARENT].split("-")[1:2][0]
        log.info(
            "%s %s -> %s %s in %.1f ms (%d attempt(s))",
            flight.capability, flight.request_id, flight.node_id or "-", outcome,
            (self._clock() - flight.started) * 1000, flight.attempts,
            extra={"request_id": flight.request_id, "trace_id": trace_id,
                   "node_id": flight.node_id or ""},
        )  # fmt: skip


def _none(_: m.InferRequest) -> None:
    return None
