"""Two regions on a NATS supercluster (issue 15, 5): clusters ``us`` and ``eu`` on
loopback joined by NATS gateway connections, a fedgate gateway and a worker in each.

- Requests are served in their own region: NATS gives a queue-group message to a member
  in the publisher's cluster when there is one, and the region in ``qos.region`` makes
  the local node the better candidate.
- Residency (``allowed_regions``) holds when a region's nodes are all down: refused, not
  served elsewhere.
- A region's loss moves eligible traffic to the other: its nodes, then its gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import errors
from shared.client import FedClient
from shared.messages import QoS
from shared.natsserver import NatsServer
from tests.helpers import connect, eventually, federation
from tests.integration.test_protocol import fast
from tests.llm.conftest import free_port

REGIONS = ("us", "eu")


def _conf(path: Path, name: str, own: int, other: tuple[str, int]) -> Path:
    path.write_text(
        f"gateway {{\n  name: {name}\n  host: 127.0.0.1\n  port: {own}\n"
        f'  gateways: [{{name: {other[0]}, urls: ["nats://127.0.0.1:{other[1]}"]}}]\n}}\n'
    )
    return path


@pytest.fixture
def supercluster(tmp_path: Path) -> Iterator[dict[str, NatsServer]]:
    ports = {r: free_port() for r in REGIONS}
    servers = {}
    for region, other in (("us", "eu"), ("eu", "us")):
        conf = _conf(tmp_path / f"{region}.conf", region, ports[region], (other, ports[other]))
        servers[region] = NatsServer(data_dir=tmp_path / region, extra_args=["-c", str(conf)])
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.cleanup()


async def _linked(us_url: str, eu_url: str) -> None:
    """Wait until a message published in one cluster reaches a subscriber in the other."""
    a, b = await connect(us_url), await connect(eu_url)
    got = asyncio.Event()

    async def on(_: object) -> None:
        got.set()

    await b.subscribe("probe.link", cb=on)
    await b.flush()

    async def sent() -> bool:
        await a.publish("probe.link", b"")
        await a.flush()
        try:
            await asyncio.wait_for(got.wait(), 0.2)
        except TimeoutError:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 15
    while not await sent():
        assert asyncio.get_running_loop().time() < deadline, "the clusters never linked"
    await a.close()
    await b.close()


async def test_regions_serve_locally_keep_residency_and_fail_over(
    supercluster: dict[str, NatsServer],
) -> None:
    us_url, eu_url = supercluster["us"].url, supercluster["eu"].url
    await _linked(us_url, eu_url)
    async with federation(us_url) as us, federation(eu_url) as eu:
        gw_us = await us.gateway(fast(gateway_id="gw-us", strategy="power_of_two"))
        gw_eu = await eu.gateway(fast(gateway_id="gw-eu", strategy="power_of_two"))
        await us.node("us-1", region="us")
        await eu.node("eu-1", region="eu")
        for fed in (us, eu):
            await fed.seen("us-1", "eu-1", timeout=15)
        us_client = FedClient(await us.client())
        eu_client = FedClient(await eu.client())

        # Both nodes measured first (an unmeasured node scores below a healthy remote one
        # until exploration and canaries have measured it: docs/routing.md).
        for client, region in ((us_client, "us"), (eu_client, "eu")):
            for i in range(3):
                await client.infer("generate", f"warm {i}", qos=QoS(allowed_regions=(region,)))
        base = {g.gateway_id: g.views.stats().total_requests for g in (gw_us, gw_eu)}

        # 1. each region's callers are served by their own gateway and their own node
        for client, region in ((us_client, "us"), (eu_client, "eu")):
            for i in range(10):
                r = await client.infer("generate", f"hello {i}", qos=QoS(region=region))
                assert r.served_by == f"{region}-1", (region, r.served_by)
        # (a direct reply may reach the caller before its gateway counted it: wait)
        await eventually(
            lambda: (
                gw_us.views.stats().total_requests == base["gw-us"] + 10
                and gw_eu.views.stats().total_requests == base["gw-eu"] + 10
            ),
            5,
            "each gateway counted its region's 10 requests",
        )

        # 2. the us nodes die: residency in us is refused, not served in eu ...
        await us.nodes["us-1"].stop()
        await eventually(lambda: all(g.catalog.node("us-1") is None for g in (gw_us, gw_eu)), 10)
        with pytest.raises((errors.NoCapacity, errors.PolicyViolation)):
            await us_client.infer("generate", "stay in us", qos=QoS(allowed_regions=("us",)))
        # ... and eligible traffic moves to eu
        r = await us_client.infer("generate", "anywhere", qos=QoS(region="us"))
        assert r.served_by == "eu-1"

        # 3. the us gateway goes too: us callers are answered by the eu gateway
        before = gw_eu.views.stats().total_requests
        await gw_us.stop()
        r = await us_client.infer("generate", "still served", qos=QoS(region="us"))
        assert r.served_by == "eu-1"
        await eventually(lambda: gw_eu.views.stats().total_requests == before + 1, 5)
