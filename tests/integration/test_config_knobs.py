"""Breaker and health thresholds come from GatewayConfig (flags, env, TOML)."""

from __future__ import annotations

from gateway.breaker import CircuitState
from gateway.health import HealthState
from shared.client import FedClient
from tests.helpers import federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions


async def test_thresholds_from_config_shape_breaker_and_health(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway(
            breaker_failure_threshold=1,
            breaker_reset_timeout_s=60,
            health_failure_threshold=5,
            retry_backoff_initial_s=0.001,
            strategy="least_latency",  # the cheaper (failing) node first, deterministically
        )
        await fed.node("bad", SyntheticBackend(SyntheticOptions(fail_rate=1.0)),
                       models={"m": ("generate",)}, cost=0.0)  # fmt: skip
        await fed.node("good", models={"m": ("generate",)}, cost=1.0)
        await fed.seen("bad", "good")
        result = await FedClient(await fed.client()).infer("generate", "x")
        assert result.served_by == "good" and result.attempts == 2
        # one failure opens the circuit (threshold 1), but health needs 5 to give up
        assert gw.breaker.state("bad") is CircuitState.OPEN
        health = gw.health.get_cached_health("bad")
        assert health is not None and health.status is HealthState.DEGRADED
        assert gw.breaker.config.reset_timeout_s == 60
