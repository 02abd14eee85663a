"""One recorder for what the gateway observes about requests: counters, metrics,
``fed.decisions`` and trace spans.

The engine tells it about each step (accepted, routed, dispatched, attempt ended,
answered); it fans out to ``GatewayStats``, the optional ``GatewayMetrics``, the
``Decisions`` batcher and OpenTelemetry spans (only when tracing is on: otherwise every
span call is one attribute test). Nothing here sends on the data path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.flight import Attempt, Flight
from gateway.decisions import Decisions
from gateway.stats import GatewayStats
from shared import errors, telemetry


class Recorder:
    """Stats, metrics, decisions and spans of one gateway."""

    def __init__(
        self,
        stats: GatewayStats,
        decisions: Decisions,
        gateway_id: str,
        strategy: str,
        clock: Callable[[], float],
    ) -> None:
        self.stats = stats
        self.decisions = decisions
        self.gateway_id = gateway_id
        self.strategy = strategy
        """The router's strategy: the ``reason`` of every decision."""
        self.clock = clock
        self.metrics: Any = None
        """A ``gateway.metrics.GatewayMetrics`` when metrics are exported."""
        self.retries = 0
        """Dispatches retried on another node (before any chunk)."""
        self.failovers = 0
        """Streams continued on another node after chunks were relayed."""

    # -- a request arrives ---------------------------------------------------------------

    def accepted(self, flight: Flight, subject: str, headers: dict[str, str] | None) -> None:
        """A request was accepted (``subject``: where it came from)."""
        if telemetry.enabled:
            flight.span = telemetry.start(
                "process infer",
                kind=telemetry.CONSUMER,
                headers=headers,
                attributes={
                    **telemetry.messaging(subject, "process"),
                    "fed.request_id": flight.request_id,
                    "fed.capability": flight.capability,
                    "fed.gateway": self.gateway_id,
                },
            )
        self.stats.record_request(flight.request.tenant_id)
        if flight.request.stream:
            self.stats.stream_started()

    # -- attempts ------------------------------------------------------------------------

    def routing(self, flight: Flight) -> Any:
        """The ``route`` span of the next routing (None without tracing)."""
        if flight.span is None:
            return None
        return telemetry.start(
            "route",
            parent=flight.span,
            attributes={"fed.capability": flight.capability, "fed.excluded": len(flight.tried)},
        )

    @staticmethod
    def routed(span: Any, node_id: str, score: float) -> None:
        """Routing chose ``node_id``."""
        if span is not None:
            span.set_attributes({"fed.node_id": node_id, "fed.score": score})
            span.end()

    @staticmethod
    def unrouted(span: Any, error: errors.FedError) -> None:
        """Routing found no node."""
        if span is not None:
            telemetry.end_error(span, error.message)

    def dispatched(
        self,
        flight: Flight,
        attempt: Attempt,
        region: str,
        subject: str,
        failover: bool,
    ) -> dict[str, str] | None:
        """An attempt is being sent; the headers to send it with (trace context)."""
        self.stats.record_dispatch(attempt.node_id)
        headers = flight.trace_headers
        if flight.span is not None:
            span = attempt.span = telemetry.start(
                "send infer",
                kind=telemetry.PRODUCER,
                parent=flight.span,
                attributes={
                    **telemetry.messaging(subject, "publish"),
                    "fed.node_id": attempt.node_id,
                    "fed.region": region,
                    "fed.attempt": attempt.number,
                    "fed.score": attempt.score,
                    "fed.failover": failover,
                },
            )
            headers = telemetry.inject(span, headers)
        return headers

    @staticmethod
    def attempt_ended(attempt: Attempt, success: bool | None) -> None:
        """An attempt let go of its node (``success`` None: abandoned)."""
        span = attempt.span
        if span is not None:
            attempt.span = None
            if success:
                span.end()
            else:
                telemetry.end_error(span, "attempt failed" if success is False else "abandoned")

    # -- a request ends ------------------------------------------------------------------

    def closed(self, flight: Flight, error: str | None, tokens: int) -> None:
        """The flight is over (before its answer is published): its span and stream end."""
        span = flight.span
        if span is not None:
            flight.span = None
            ttft = flight.current.first_chunk_at if flight.current is not None else None
            span.set_attributes({
                "fed.node_id": flight.node_id or "",
                "fed.attempts": flight.attempts,
                "fed.tokens": tokens,
                "fed.ttft_ms": round((ttft - flight.started) * 1000, 3) if ttft else -1.0,
            })  # fmt: skip
            if error is None:
                span.end()
            else:
                telemetry.end_error(span, error)
        if flight.request.stream:
            self.stats.stream_ended()

    def answered(self, flight: Flight, outcome: str, tokens: int = 0) -> None:
        """The flight's outcome (``ok``, an error kind, ``caller_gone``), after its answer."""
        elapsed = self.clock() - flight.started
        attempt = flight.current
        node_id = None if attempt is None else attempt.node_id
        if outcome == "ok":
            self.stats.record_success(elapsed, tokens, node_id or "", flight.request.tenant_id)
        else:
            self.stats.record_failure(node_id, flight.request.tenant_id)
        if self.metrics is not None:
            ttft = None
            if attempt is not None and attempt.first_chunk_at is not None:
                ttft = attempt.first_chunk_at - flight.started
            self.metrics.finished(
                flight.capability, flight.request.model, node_id, outcome, elapsed, ttft, tokens
            )
        self.decisions.record(flight, outcome, self.strategy if flight.attempts else "")
