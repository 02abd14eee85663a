"""Gateway metrics through OpenTelemetry, scraped by Prometheus at ``/metrics``.

Enabled by ``fedgate gateway --metrics-port N``; off by default (then the service
holds ``metrics = None`` and the hot path pays one attribute test). Per-request
instruments are recorded when a request ends; fleet state (in-flight, queue, circuit
and health state per node, heartbeat age) is observed at scrape time, so it costs
nothing between scrapes. The scrape endpoint runs on the gateway's event loop (a tiny
asyncio HTTP server), so collection never races the service's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.breaker import CircuitState
from gateway.health import HealthState

if TYPE_CHECKING:
    from gateway.flight import Flight
    from gateway.service import GatewayService

log = logging.getLogger("fedgate.metrics")

_CIRCUIT = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
_HEALTH = {
    HealthState.UNKNOWN: 0,
    HealthState.HEALTHY: 1,
    HealthState.DEGRADED: 2,
    HealthState.UNHEALTHY: 3,
}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The instruments of one gateway, on their own registry and meter provider."""

    def __init__(self, service: GatewayService) -> None:
        self.svc = service
        self.registry = CollectorRegistry()
        self.reader = PrometheusMetricReader(registry=self.registry)
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

        latency_view = View(
            instrument_name="fedgate.*duration*",
            aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
        )
        ttft_view = View(
            instrument_name="fedgate.ttft",
            aggregation=ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS),
        )
        self.provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create(
                {"service.name": "fedgate-gateway", "fedgate.gateway": service.gateway_id}
            ),
            views=[latency_view, ttft_view],
        )
        meter = self.provider.get_meter("fedgate.gateway")
        self.requests = meter.create_counter(
            "fedgate.requests", unit="1", description="Requests ended, by outcome"
        )
        self.duration = meter.create_histogram(
            "fedgate.request.duration", unit="s", description="Request latency, end to end"
        )
        self.ttft = meter.create_histogram(
            "fedgate.ttft", unit="s", description="Time to the first chunk or result"
        )
        self.tokens = meter.create_counter("fedgate.tokens", unit="1", description="Tokens served")
        meter.create_observable_gauge(
            "fedgate.in_flight", [self._in_flight], description="Requests in flight"
        )
        meter.create_observable_gauge(
            "fedgate.queued", [self._queued], description="Requests waiting for capacity"
        )
        meter.create_observable_counter(
            "fedgate.retries", [self._retries], description="Dispatches retried on another node"
        )
        meter.create_observable_counter(
            "fedgate.failovers", [self._failovers], description="Mid-stream failovers"
        )
        meter.create_observable_gauge(
            "fedgate.circuit.state",
            [self._circuits],
            description="Circuit per node: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "fedgate.node.health",
            [self._health],
            description="Health per node: 0 unknown, 1 healthy, 2 degraded, 3 unhealthy",
        )
        meter.create_observable_gauge(
            "fedgate.heartbeat.age", [self._heartbeat_age], unit="s",
            description="Seconds since each node's last heartbeat",
        )  # fmt: skip
        self._server: asyncio.Server | None = None

    # -- recording (called by the service when a request ends) ----------------------

    def finished(self, flight: Flight, outcome: str, elapsed_s: float, tokens: int) -> None:
        """Record one ended request."""
        attrs = {
            "capability": flight.capability,
            "model": flight.request.model or "",
            "node": flight.node_id or "",
            "outcome": outcome,
        }
        self.requests.add(1, attrs)
        self.duration.record(elapsed_s, attrs)
        if flight.first_chunk_at is not None:
            self.ttft.record(
                flight.first_chunk_at - flight.started,
                {"capability": flight.capability, "node": flight.node_id or ""},
            )
        if tokens:
            self.tokens.add(tokens, attrs)

    # -- observed at scrape time ----------------------------------------------------

    def _in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.svc.in_flight)

    def _queued(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.svc.queued)

    def _retries(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.svc.retries)

    def _failovers(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.svc.failovers)

    def _circuits(self, _: CallbackOptions) -> Iterable[Observation]:
        for node in self.svc.catalog.nodes():
            state = self.svc.breaker.state(node.node_id)
            yield Observation(_CIRCUIT[state], {"node": node.node_id})

    def _health(self, _: CallbackOptions) -> Iterable[Observation]:
        for node in self.svc.catalog.nodes():
            health = self.svc.health.get_cached_health(node.node_id)
            if health is not None:
                yield Observation(_HEALTH[health.status], {"node": node.node_id})

    def _heartbeat_age(self, _: CallbackOptions) -> Iterable[Observation]:
        now = self.svc.clock()
        for node in self.svc.catalog.nodes():
            if not node.static:
                yield Observation(round(now - node.last_seen, 3), {"node": node.node_id})

    # -- scrape endpoint ------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every instrument."""
        return generate_latest(self.registry)

    async def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` on ``host:port`` (0 = any free port); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.split(b"?")[0] in (b"/metrics", b"/"):
                body, status, ctype = self.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop the endpoint and the meter provider."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.provider.shutdown()
