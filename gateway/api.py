"""The seed-shaped Python API (``FederationGateway``, ``GatewayBuilder``) over real NATS.

The Rust reference's ``FederationGateway`` simulated execution in-process; this one is
a real gateway service on a NATS connection plus a client on the same connection, so
``await gateway.infer(request)`` travels ``infer.<capability>`` → gateway → node inbox
and back. The nouns and the stats match the reference so its tests port one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import msgspec
from nats.aio.client import Client

from gateway.breaker import CircuitBreaker, CircuitState
from gateway.catalog import ModelCatalog
from gateway.health import HealthChecker, HealthState
from gateway.policies import CompositePolicy
from gateway.router import LoadBalanceStrategy, Router, RouterConfig
from gateway.service import GatewayService
from gateway.stats import GatewayStats, StatsSnapshot
from shared.client import FedClient, Stream
from shared.config import GatewayConfig
from shared.messages import InferRequest, QoSRequirements

InferenceRequest = InferRequest
"""The reference's name for a request (``capability`` is a field here)."""

__all__ = [
    "CircuitBreaker", "CircuitState", "CompositePolicy", "FederationGateway", "GatewayBuilder",
    "GatewayConfig", "HealthChecker", "HealthState", "InferenceRequest", "InferenceResponse",
    "LoadBalanceStrategy", "ModelCatalog", "QoSRequirements", "Router", "RouterConfig",
    "StatsSnapshot", "TokenStream",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """The reference's response shape: output bytes, serving node, latency, tokens."""

    output: bytes
    served_by: str
    latency_ms: float
    tokens: int | None
    attempts: int = 1


class TokenStream:
    """The reference's token stream: ``next_token()`` until None, ``cancel()`` to stop."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._iter = stream.__aiter__()
        self._done = False

    @property
    def served_by(self) -> str:
        """The node that finished the stream (after the end)."""
        return self._stream.served_by

    async def next_token(self) -> bytes | None:
        """The next chunk's text as bytes, or None once the stream is complete."""
        if self._done:
            return None
        try:
            chunk = await anext(self._iter)
        except StopAsyncIteration:
            self._done = True
            return None
        return chunk.text.encode()

    async def cancel(self) -> None:
        """Stop the stream: the gateway answers ``cancelled`` and the node stops."""
        if self._done:
            return
        self._done = True
        await self._stream.cancel()
        await self._iter.aclose()  # type: ignore[attr-defined]


class FederationGateway:
    """A gateway service plus a client, both on one NATS connection."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        catalog: ModelCatalog | None = None,
        health: HealthChecker | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        router: Router | None = None,
        nc: Client | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        # Explicit None checks: an empty catalog is falsy.
        if catalog is None:
            catalog = router.catalog if router is not None else ModelCatalog()
        if health is None:
            health = router.health if router is not None else HealthChecker()
        if circuit_breaker is None:
            circuit_breaker = router.breaker if router is not None else CircuitBreaker()
        self.catalog, self.health, self.circuit_breaker = catalog, health, circuit_breaker
        if router is None:
            router = Router(catalog, health, circuit_breaker)
        self.router = router
        self._stats = GatewayStats()
        self.nc = nc
        self.service: GatewayService | None = None
        self.client: FedClient | None = None

    async def start(self, nc: Client | None = None) -> Self:
        """Start serving on ``nc`` (or the connection given at construction)."""
        self.nc = nc or self.nc
        if self.nc is None:
            raise RuntimeError("FederationGateway.start needs a NATS connection")
        if self.service is None:
            self.service = GatewayService(
                self.nc,
                self.config,
                catalog=self.catalog,
                health=self.health,
                breaker=self.circuit_breaker,
                router=self.router,
                stats=self._stats,
            )
            await self.service.start()
            self.client = FedClient(self.nc, timeout_s=self.config.request_timeout_s, retries=0)
        return self

    async def close(self) -> None:
        """Stop the service (the connection stays open: its owner closes it)."""
        if self.client is not None:
            await self.client.close()
        if self.service is not None:
            await self.service.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _client(self) -> FedClient:
        if self.client is None:
            raise RuntimeError("call `await gateway.start(nc)` first")
        return self.client

    @staticmethod
    def _fields(request: InferRequest) -> dict[str, Any]:
        fields = msgspec.structs.asdict(request)
        fields.pop("capability")
        fields.pop("input")
        fields.pop("stream")
        return fields

    async def infer(self, request: InferRequest) -> InferenceResponse:
        """One request through the federation; raises a ``FedError`` on failure."""
        result = await self._client().infer(
            str(request.capability), request.input, **self._fields(request)
        )
        return InferenceResponse(
            output=result.output.encode(),
            served_by=result.served_by,
            latency_ms=result.result.latency_ms,
            tokens=result.result.tokens,
            attempts=result.attempts,
        )

    async def infer_stream(self, request: InferRequest) -> TokenStream:
        """A streaming request; read it with ``next_token()``."""
        stream = self._client().stream(
            str(request.capability), request.input, **self._fields(request)
        )
        return TokenStream(stream)

    def stats(self) -> StatsSnapshot:
        """This gateway's statistics."""
        return self._stats.snapshot()


class GatewayBuilder:
    """Assembles a FederationGateway; missing parts get defaults (as the reference)."""

    def __init__(self) -> None:
        self._config: GatewayConfig | None = None
        self._catalog: ModelCatalog | None = None
        self._health: HealthChecker | None = None
        self._breaker: CircuitBreaker | None = None
        self._router: Router | None = None

    def config(self, config: GatewayConfig) -> Self:
        """Set the gateway config."""
        self._config = config
        return self

    def catalog(self, catalog: ModelCatalog) -> Self:
        """Set the model catalog."""
        self._catalog = catalog
        return self

    def health(self, health: HealthChecker) -> Self:
        """Set the health checker."""
        self._health = health
        return self

    def circuit_breaker(self, breaker: CircuitBreaker) -> Self:
        """Set the circuit breaker."""
        self._breaker = breaker
        return self

    def router(self, router: Router) -> Self:
        """Set the router (its catalog, health and breaker are then used)."""
        self._router = router
        return self

    def build(self) -> FederationGateway:
        """The gateway (call ``await gateway.start(nc)`` before sending requests)."""
        return FederationGateway(
            self._config,
            catalog=self._catalog,
            health=self._health,
            circuit_breaker=self._breaker,
            router=self._router,
        )
