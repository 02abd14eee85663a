"""Gateway metrics through OpenTelemetry, scraped by Prometheus at ``/metrics``.

Enabled by ``fedgate gateway --metrics-port N``; off by default (then the recorder holds
``metrics = None`` and the hot path pays one attribute test). Per-request instruments
are recorded when a request ends; fleet state (in flight, queue, circuit and health
per node, heartbeat age) is read at scrape time from two read models (``GatewayLoad``,
``NodesReply``), taken once per scrape. The endpoint is ``prometheus_client``'s own
aiohttp handler on this registry, served on the gateway's event loop, so collection
never races the service's state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import serving
from shared import messages as m

log = logging.getLogger("fedgate.metrics")

_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}
_HEALTH = {"unknown": 0, "healthy": 1, "degraded": 2, "unhealthy": 3}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The instruments of one gateway, on their own registry and meter provider."""

    def __init__(
        self,
        gateway_id: str,
        *,
        load: Callable[[], m.GatewayLoad],
        fleet: Callable[[], m.NodesReply],
        limits: Callable[[], list[m.TenantLimitView]] = list,
    ) -> None:
        self._read_load = load
        self._read_fleet = fleet
        self._read_limits = limits
        self._limits: list[m.TenantLimitView] = []
        self._load = m.GatewayLoad()
        self._fleet = m.NodesReply(gateway=gateway_id)
        self.registry = CollectorRegistry()
        self.reader = PrometheusMetricReader(registry=self.registry)
        buckets = ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)
        self.provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create(
                {"service.name": "fedgate-gateway", "fedgate.gateway": gateway_id}
            ),
            views=[
                View(instrument_name="fedgate.*duration*", aggregation=buckets),
                View(instrument_name="fedgate.ttft", aggregation=buckets),
            ],
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
        gauge, counter = meter.create_observable_gauge, meter.create_observable_counter
        gauge("fedgate.in_flight", [self._in_flight], description="Requests in flight")
        gauge("fedgate.queued", [self._queued], description="Requests waiting for capacity")
        counter(
            "fedgate.retries", [self._retries], description="Dispatches retried on another node"
        )
        counter("fedgate.failovers", [self._failovers], description="Mid-stream failovers")
        gauge(
            "fedgate.circuit.state", [self._circuits],
            description="Circuit per node: 0 closed, 1 half-open, 2 open",
        )  # fmt: skip
        gauge(
            "fedgate.node.health", [self._health],
            description="Health per node: 0 unknown, 1 healthy, 2 degraded, 3 unhealthy",
        )  # fmt: skip
        gauge(
            "fedgate.heartbeat.age", [self._heartbeat_age], unit="s",
            description="Seconds since each node's last heartbeat",
        )  # fmt: skip
        gauge(
            "fedgate.tenant.limit.used", [self._limit_used],
            description="Per tenant and limit: requests/tokens handed out this window "
            "(slots in use for concurrent), at this gateway",
        )  # fmt: skip
        gauge(
            "fedgate.tenant.limit.max", [self._limit_max],
            description="Per tenant and limit: the configured maximum (fleet-wide)",
        )  # fmt: skip
        counter(
            "fedgate.tenant.refused", [self._limit_refused],
            description="Requests answered 429 rate_limited, per tenant and limit",
        )  # fmt: skip
        self._runner: web.AppRunner | None = None
        self._closed = False

    # -- recording (called by the recorder when a request ends) --------------------------

    def finished(
        self,
        capability: str,
        model: str | None,
        node: str | None,
        outcome: str,
        elapsed_s: float,
        ttft_s: float | None,
        tokens: int,
    ) -> None:
        """Record one ended request (``ttft_s``: to its first chunk, None if none came)."""
        attrs = {"capability": capability, "model": model or "", "node": node or "",
                 "outcome": outcome}  # fmt: skip
        self.requests.add(1, attrs)
        self.duration.record(elapsed_s, attrs)
        if ttft_s is not None:
            self.ttft.record(ttft_s, {"capability": capability, "node": node or ""})
        if tokens:
            self.tokens.add(tokens, attrs)

    # -- observed at scrape time (from the read models taken for this scrape) ------------

    def refresh(self) -> None:
        """Take the read models this scrape reports."""
        self._load = self._read_load()
        self._fleet = self._read_fleet()
        self._limits = self._read_limits()

    def _in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._load.in_flight)

    def _queued(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._load.queued)

    def _retries(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._load.retries)

    def _failovers(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._load.failovers)

    def _circuits(self, _: CallbackOptions) -> Iterable[Observation]:
        for node in self._fleet.nodes:
            yield Observation(_CIRCUIT.get(node.circuit, 0), {"node": node.node_id})

    def _health(self, _: CallbackOptions) -> Iterable[Observation]:
        for node in self._fleet.nodes:
            yield Observation(_HEALTH.get(node.health, 0), {"node": node.node_id})

    def _heartbeat_age(self, _: CallbackOptions) -> Iterable[Observation]:
        for node in self._fleet.nodes:
            if node.incarnation:  # a node registered through the API sends no heartbeats
                age_s = round(node.heartbeat_age_ms / 1000, 3)
                yield Observation(age_s, {"node": node.node_id})

    def _limit_used(self, _: CallbackOptions) -> Iterable[Observation]:
        for x in self._limits:
            yield Observation(x.used, {"tenant": x.tenant, "limit": x.limit})

    def _limit_max(self, _: CallbackOptions) -> Iterable[Observation]:
        for x in self._limits:
            yield Observation(x.max, {"tenant": x.tenant, "limit": x.limit})

    def _limit_refused(self, _: CallbackOptions) -> Iterable[Observation]:
        for x in self._limits:
            yield Observation(x.refused, {"tenant": x.tenant, "limit": x.limit})

    # -- scrape endpoint -------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every instrument, as of now."""
        self.refresh()
        return generate_latest(self.registry)

    async def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` (and ``/``) on ``host:port`` (0 = any free port);
        returns the bound port."""
        exposition = make_aiohttp_handler(self.registry)

        async def scrape(request: web.Request) -> web.StreamResponse:
            self.refresh()
            response = await exposition(request)
            response.force_close()  # one scrape per connection, as Prometheus does
            return response

        app = web.Application()
        app.add_routes([web.get("/metrics", scrape), web.get("/", scrape)])
        runner, bound = await serving.serve(app, host, port)
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    async def close(self) -> None:
        """Stop the endpoint and the meter provider (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if not self._closed:
            self._closed = True
            self.provider.shutdown()
