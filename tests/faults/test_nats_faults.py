"""NATS itself fails: the server restarts, a cluster member dies, a gateway process dies.

Gateways run in-process where the test reads their breaker (wired with the reconnect
callbacks ``fedgate gateway`` installs), as processes where one is SIGKILLed. Workers are
real ``fedgate worker`` processes; callers use the Python client (``FedClient``), whose
deadline and liveness checks are what end a request whose replies died with the server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import nats
import pytest

from gateway.breaker import CircuitState
from gateway.service import GatewayService
from shared.client import FedClient
from shared.config import GatewayConfig
from shared.natsserver import NatsServer
from tests.faults.load import ClientLoad, gateway_in_process, stop_gateway, worker
from tests.helpers import Proc, connect, eventually, processes
from worker.backends.synthetic import expected_text

pytestmark = pytest.mark.slow

CFG = GatewayConfig(
    first_chunk_timeout_s=2.0, stall_timeout_s=1.0, max_retries=4, probe_interval_s=0.5
)
IDS = ("w1", "w2", "w3")


def assert_circuits_closed(svc: GatewayService, ids: tuple[str, ...]) -> None:
    states = {i: svc.breaker.state(i) for i in ids}
    assert all(s is CircuitState.CLOSED for s in states.values()), states


async def serves(client: FedClient) -> bool:
    """One request succeeds now (False on any error)."""
    try:
        result = await client.infer("generate", "back?", timeout_ms=2000)
    except Exception:
        return False
    return result.output == expected_text("m", "back?")


async def test_nats_server_restart_under_load(nats_server: NatsServer) -> None:
    url = nats_server.url
    svc, gw_nc = await gateway_in_process(url, CFG)
    nc = await connect(url)
    client = FedClient(nc, liveness_s=0.25)
    with processes() as procs:
        procs += [worker(url, i) for i in IDS]
        await eventually(lambda: all(svc.catalog.node(i) for i in IDS), 30, "workers joined")
        load = ClientLoad(client, "m")
        task = asyncio.create_task(load.run(300, concurrency=16, timeout_ms=8000))
        await eventually(lambda: load.done >= 60, 60, "load running")
        in_flight = svc.in_flight
        await asyncio.to_thread(nats_server.restart)  # SIGTERM, then the same port again
        back = time.monotonic()
        await eventually(lambda: serves(client), 20, "serving after the restart")
        print(
            f"[nats restart] {in_flight} requests in flight at the gateway when the server "
            f"went down; serving again {time.monotonic() - back:.2f}s after its return"
        )
        await asyncio.wait_for(task, 120)
        await eventually(lambda: all(svc.catalog.node(i) for i in IDS), 10, "catalog rebuilt")
        line = load.tally.assert_clean("nats restart")
        assert load.hung == 0, line
        assert_circuits_closed(svc, IDS)
        assert svc.in_flight == 0
    await nc.close()
    await stop_gateway(svc, gw_nc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cluster_member_loss(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three routed servers; the one the gateway uses is SIGKILLed mid-load."""
    routes = [f"nats://127.0.0.1:{free_port()}" for _ in range(3)]
    servers = [
        NatsServer(
            data_dir=tmp_path_factory.mktemp(f"nats{i}"),
            extra_args=[
                "--cluster_name",
                "fedgate",
                "--cluster",
                routes[i],
                "--routes",
                ",".join(r for j, r in enumerate(routes) if j != i),
            ],
        )
        for i in range(3)
    ]
    try:
        for s in servers:
            s.start()
        urls = ",".join(s.url for s in servers)
        svc, gw_nc = await gateway_in_process(urls, CFG)
        nc = await nats.connect(
            servers=[s.url for s in servers], max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )
        client = FedClient(nc, liveness_s=0.25)
        with processes() as procs:
            procs += [worker(urls, i) for i in IDS]
            await eventually(lambda: all(svc.catalog.node(i) for i in IDS), 30, "joined")
            await eventually(lambda: serves(client), 10, "cluster serving")
            load = ClientLoad(client, "m")
            task = asyncio.create_task(load.run(300, concurrency=16, timeout_ms=8000))
            await eventually(lambda: load.done >= 60, 60, "load running")
            victim = next(s for s in servers if str(s.port) in str(gw_nc.connected_url.port))
            victim.kill()
            await eventually(
                lambda: (
                    svc.nc.is_connected
                    and gw_nc.connected_url is not None
                    and gw_nc.connected_url.port != victim.port
                ),
                20,
                "gateway failed over",
            )
            await eventually(lambda: serves(client), 20, "serving after the loss")
            await asyncio.wait_for(task, 120)
            await eventually(lambda: all(svc.catalog.node(i) for i in IDS), 10, "catalog")
            tally = load.tally
            line = tally.line(f"cluster member loss (killed :{victim.port})")
            print(line, "- seq lists with a gap:", load.bad_examples)
            # A chunk in transit through the killed server is lost (NATS is at-most-once);
            # the client must then fail the stream rather than report success. Until
            # shared/client.py checks seq (test_client_fails_a_stream_with_a_gap, xfail),
            # such silent gaps happen here: check only that nothing else went wrong.
            assert tally.ok + sum(tally.errors.values()) == tally.requests, line
            assert (tally.lost, load.hung, tally.answered_twice) == (0, 0, 0), line
            assert tally.bad_text == tally.bad_seq, line
            assert_circuits_closed(svc, IDS)
        await nc.close()
        await stop_gateway(svc, gw_nc)
    finally:
        for s in servers:
            s.cleanup()


async def gateway_stats(nc: nats.NATS, ids: set[str]) -> dict[str, dict[str, object]]:
    """``fed.gateway.stats`` from each of these gateways (each answers for itself)."""
    seen: dict[str, dict[str, object]] = {}
    inbox = nc.new_inbox()

    async def on_msg(msg: object) -> None:
        body = json.loads(msg.data)  # type: ignore[attr-defined]
        seen[body["gateway"]] = body

    sub = await nc.subscribe(inbox, cb=on_msg)
    asked = 0

    async def answered() -> bool:
        nonlocal asked
        asked += 1
        if asked % 20 == 1:  # ask again now and then: a gateway may still be starting
            await nc.publish("fed.gateway.stats", b"", reply=inbox)
        return ids <= seen.keys()

    await eventually(answered, 20, f"stats from {ids}")
    await sub.unsubscribe()
    return seen


async def test_client_resends_through_the_other_gateway_process(nats_url: str) -> None:
    """Two gateway processes in the queue group; SIGKILL one with requests in flight."""
    with processes() as procs:
        gateways = {
            g: Proc("gateway", "--nats", nats_url, "--gateway-id", g, "--max-retries", "2")
            for g in ("gw-a", "gw-b")
        }
        procs += [*gateways.values(), worker(nats_url, "w1", "--ttft-ms", "2000")]
        nc = await connect(nats_url)
        client = FedClient(nc, liveness_s=0.2)

        async def joined() -> bool:
            try:
                view = await nc.request("fed.gateway.nodes", b"", timeout=0.5)
            except Exception:
                return False
            return "w1" in view.data.decode()

        await eventually(joined, 30, "w1 joined")
        await gateway_stats(nc, {"gw-a", "gw-b"})

        async def stream(i: int) -> str:
            async with client.stream("generate", f"s{i}", timeout_ms=15_000) as s:
                return "".join([c.text async for c in s])

        calls = [client.infer("generate", f"n{i}", timeout_ms=15_000) for i in range(12)]
        tasks = [asyncio.create_task(c) for c in calls]
        streams = [asyncio.create_task(stream(i)) for i in range(12)]

        async def spread() -> bool:
            stats = await gateway_stats(nc, {"gw-a", "gw-b"})
            return all(int(stats[g]["total_requests"]) > 0 for g in stats)  # type: ignore[call-overload]

        await eventually(spread, 10, "both gateways hold requests")
        held = await gateway_stats(nc, {"gw-a", "gw-b"})
        gateways["gw-a"].kill()  # SIGKILL: its subscriptions vanish with its connection
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        texts = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 30)
        failed = [r for r in [*results, *texts] if isinstance(r, BaseException)]
        assert not failed, failed
        assert [r.output for r in results] == [expected_text("m", f"n{i}") for i in range(12)]
        assert texts == [expected_text("m", f"s{i}") for i in range(12)]
        after = (await gateway_stats(nc, {"gw-b"}))["gw-b"]
        moved = int(after["successful_requests"]) - 0  # type: ignore[call-overload]
        print(
            f"[gateway SIGKILL] gw-a held {held['gw-a']['total_requests']} of 24 requests; "
            f"gw-b answered {moved} (all 24 ok)"
        )
        assert moved == 24
        await nc.close()
