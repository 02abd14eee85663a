"""The four tests of ../shared/reference/federation_tests.rs, ported one to one.

Where the reference simulated execution, ``infer`` here goes over NATS to real worker
nodes named as in the reference (each on its own connection).
"""

from __future__ import annotations

import pytest

from gateway.api import FederationGateway, GatewayBuilder, InferenceRequest
from gateway.breaker import CircuitBreaker, CircuitState
from gateway.catalog import ModelCatalog
from gateway.health import HealthChecker, HealthState
from gateway.policies import CompositePolicy
from gateway.router import LoadBalanceStrategy, Router, RouterConfig
from shared import errors
from shared.config import GatewayConfig
from shared.messages import Capability
from tests.helpers import eventually, federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions


def test_gateway_initial_stats() -> None:
    gateway = GatewayBuilder().build()
    stats = gateway.stats()
    assert stats.total_requests == 0
    assert stats.successful_requests == 0
    assert stats.failed_requests == 0
    assert stats.total_tokens == 0
    assert stats.active_streams == 0
    assert stats.avg_latency_ms == 0


async def test_gateway_stats_after_failures(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gateway = GatewayBuilder().config(GatewayConfig(max_retries=0)).build()
        await gateway.start(await fed.client())
        try:
            # No nodes registered, so inference will fail
            request = InferenceRequest(
                capability=Capability.GENERATE, input="test", request_id="fail-test"
            )
            with pytest.raises(errors.NoCapacity):
                await gateway.infer(request)
            stats = gateway.stats()
            assert stats.total_requests == 1
            assert stats.failed_requests == 1
            assert stats.successful_requests == 0
        finally:
            await gateway.close()


async def test_stream_cancel(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        catalog, health = ModelCatalog(), HealthChecker()
        gateway = FederationGateway(catalog=catalog, health=health)
        catalog.register("stream-model", "n1", "us-west", [Capability.GENERATE])
        health.register_node("n1")
        health.report_success("n1", 0.010)
        node = await fed.node(
            "n1",
            SyntheticBackend(SyntheticOptions(token_interval_ms=20)),
            region="us-west",
            models={"stream-model": ("generate",)},
        )
        await gateway.start(await fed.client())
        try:
            request = InferenceRequest(
                capability=Capability.GENERATE,
                input="stream",
                request_id="cancel-test",
                params={"max_tokens": 200},
            )
            stream = await gateway.infer_stream(request)
            # Read a few tokens
            assert await stream.next_token()
            assert await stream.next_token()
            # Cancel the stream
            await stream.cancel()
            # After cancel, next_token should return None
            assert await stream.next_token() is None
            # ... and, made real: the node stopped generating, the gateway closed the stream.
            await eventually(lambda: not node._jobs, 5, "node job cancelled")
            assert node.served == 0
            await eventually(lambda: gateway.stats().active_streams == 0, 5)
        finally:
            await gateway.close()


async def test_full_federation_flow(nats_url: str) -> None:
    # Setup: create multi-region deployment
    catalog = ModelCatalog()
    health = HealthChecker()
    circuit_breaker = CircuitBreaker()
    catalog.register("whisper-v3", "us-west-gpu", "us-west", [Capability.TRANSCRIBE])
    catalog.register("whisper-v3", "eu-west-gpu", "eu-west", [Capability.TRANSCRIBE])
    catalog.register("llama-70b", "us-east-gpu", "us-east", [Capability.GENERATE, Capability.CODE])
    for node, region in [("embed-us", "us-west"), ("embed-eu", "eu-west")]:
        catalog.register("bge-large", node, region, [Capability.EMBED])

    # Setup health states
    health.register_node("us-west-gpu")
    for _ in range(3):
        health.report_success("us-west-gpu", 0.045)
    health.register_node("eu-west-gpu")
    for _ in range(3):
        health.report_success("eu-west-gpu", 0.120)
    health.register_node("us-east-gpu")
    health.report_success("us-east-gpu", 0.100)  # one success keeps it Unknown
    for node in ["embed-us", "embed-eu"]:
        health.register_node(node)
        for _ in range(3):
            health.report_success(node, 0.015)

    # Router with enterprise policies
    router = Router(
        catalog,
        health,
        circuit_breaker,
        config=RouterConfig(
            max_candidates=10, min_score=0.1, strategy=LoadBalanceStrategy.LEAST_LATENCY
        ),
    ).with_policy(CompositePolicy.enterprise_default())

    async with federation(nats_url) as fed:
        # Real nodes, named as in the reference, serving over NATS.
        workers = {
            "us-west-gpu": ("us-west", {"whisper-v3": ("transcribe",)}),
            "eu-west-gpu": ("eu-west", {"whisper-v3": ("transcribe",)}),
            "us-east-gpu": ("us-east", {"llama-70b": ("generate", "code")}),
            "embed-us": ("us-west", {"bge-large": ("embed",)}),
            "embed-eu": ("eu-west", {"bge-large": ("embed",)}),
        }
        for node_id, (region, models) in workers.items():
            await fed.node(node_id, region=region, models=models)

        gateway = FederationGateway(
            GatewayConfig(max_retries=3, request_timeout_s=30.0),
            router=router,
            health=health,
            circuit_breaker=circuit_breaker,
        )
        await gateway.start(await fed.client())
        try:
            await eventually(
                lambda: all(catalog.node(n) and not catalog.node(n).static for n in workers),  # type: ignore[union-attr]
                10,
                "heartbeats from every worker",
            )

            # Test 1: Transcribe routes to fastest healthy node (us-west)
            request = InferenceRequest(
                capability=Capability.TRANSCRIBE,
                input="audio data",
                request_id="test-transcribe",
                tenant_id="acme",
            )
            assert len(router.get_candidates(request)) == 2
            assert router.route(request).node_id == "us-west-gpu"
            circuit_breaker.release("us-west-gpu")

            # Test 2: Generate routes to only available node
            request = InferenceRequest(capability=Capability.GENERATE, input="prompt")
            assert router.route(request).node_id == "us-east-gpu"
            circuit_breaker.release("us-east-gpu")

            # Test 3: Embed has multiple candidates
            request = InferenceRequest(capability=Capability.EMBED, input="text")
            assert len(router.get_candidates(request)) == 2

            # Test 4: Gateway inference with stats (over NATS, to the real node)
            request = InferenceRequest(
                capability=Capability.TRANSCRIBE, input="audio", request_id="test-infer"
            )
            response = await gateway.infer(request)
            assert response.served_by == "us-west-gpu"
            assert response.output
            stats = gateway.stats()
            assert stats.total_requests == 1
            assert stats.successful_requests == 1
            assert stats.failed_requests == 0

            # Test 5: Streaming inference
            request = InferenceRequest(
                capability=Capability.GENERATE, input="stream prompt", request_id="test-stream"
            )
            stream = await gateway.infer_stream(request)
            tokens = 0
            while await stream.next_token() is not None:
                tokens += 1
            assert tokens == 10, "Should receive 10 tokens"
            assert stream.served_by == "us-east-gpu"

            # Test 6: Circuit breaker
            bad_node = "failing-node"
            assert circuit_breaker.state(bad_node) == CircuitState.CLOSED
            for _ in range(5):
                circuit_breaker.record_failure(bad_node)
            assert circuit_breaker.state(bad_node) == CircuitState.OPEN
            assert circuit_breaker.is_open(bad_node)

            # Verify catalog state
            assert len(catalog.list_all()) == 3  # whisper-v3, llama-70b, bge-large

            # Verify health states are tracked
            for node in workers:
                assert health.get_cached_health(node) is not None, node
            us_west = health.get_cached_health("us-west-gpu")
            assert us_west is not None
            assert us_west.status == HealthState.HEALTHY
        finally:
            await gateway.close()
