"""Load spreads by default: two identical workers each serve 40-60 % of the traffic,
sequentially and at concurrency 16, with the gateway's default configuration (issue 12:
the old default sent 100 % to one node). Real nats-server, in-process gateway and nodes.
"""

from __future__ import annotations

import asyncio

import pytest

from shared.client import FedClient
from shared.config import GatewayConfig
from tests.helpers import federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions

REQUESTS = 200


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_two_identical_workers_share_the_traffic(nats_url: str, concurrency: int) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway(GatewayConfig(probe_interval_s=0.5))  # defaults but the probe pace
        options = SyntheticOptions(ttft_ms=2, token_interval_ms=1)
        nodes = [
            await fed.node(n, SyntheticBackend(options), models={"m": ("generate",)}, capacity=16)
            for n in ("n1", "n2")
        ]
        await fed.seen("n1", "n2")
        client = FedClient(await fed.client())
        served: dict[str, int] = {"n1": 0, "n2": 0}
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                if i % 2:
                    result = await client.infer("generate", f"q{i}", model="m")
                    served[result.served_by] += 1
                else:
                    async with client.stream("generate", f"q{i}", model="m") as s:
                        async for _ in s:
                            pass
                    served[s.served_by] += 1

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        assert sum(served.values()) == REQUESTS
        health = {n: gw.health.get_cached_health(n) for n in served}  # for the message
        for node_id, count in served.items():
            share = count / REQUESTS
            assert 0.40 <= share <= 0.60, (served, node_id, health)
        # what the nodes themselves counted (canaries included) agrees
        assert all(node.served >= 0.4 * REQUESTS for node in nodes)
