"""Chaos under load: real worker processes SIGKILLed and restarted, a hung worker.

The gateway runs in-process (wired as ``fedgate gateway`` wires it) so the test can read
its breaker and its in-flight table; workers are real ``fedgate worker`` processes.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from gateway.health import HealthChecker, HealthConfig
from gateway.service import GatewayService
from shared.config import GatewayConfig
from tests.faults.load import StreamLoad, gateway_in_process, stop_gateway, worker
from tests.helpers import connect, eventually, processes

pytestmark = pytest.mark.slow

CHAOS = GatewayConfig(
    first_chunk_timeout_s=2.0,
    stall_timeout_s=1.0,
    max_retries=6,
    probe_interval_s=0.5,
)


async def test_workers_killed_every_second_under_load(nats_url: str) -> None:
    """1,000 streams at concurrency 32 while a worker is SIGKILLed and restarted each second."""
    svc, gw_nc = await gateway_in_process(nats_url, CHAOS)
    nc = await connect(nats_url)
    ids = ("w1", "w2", "w3")
    kills = skipped = 0
    with processes() as procs:
        workers = {i: worker(nats_url, i) for i in ids}
        procs.extend(workers.values())
        await eventually(lambda: all(svc.catalog.node(i) for i in ids), 30, "workers joined")
        load = await StreamLoad(nc, "m").start()
        finished = asyncio.Event()

        killed_as: dict[str, str] = {}  # node id -> incarnation it had when killed

        def up(node_id: str) -> bool:
            node = svc.catalog.node(node_id)
            return node is not None and node.incarnation != killed_as.get(node_id)

        async def chaos() -> None:
            # Each second, SIGKILL the next worker and restart it at once (same id, a new
            # incarnation) - provided the others are up: a Python worker takes 1-3 s to
            # start on a loaded 2-core machine, and with no worker at all every request
            # would only get an explicit no_capacity.
            nonlocal kills, skipped
            for victim in ids * 1000:
                await asyncio.sleep(1.0)  # sleep-ok: the chaos pace: one kill a second
                if finished.is_set():
                    return
                if not all(up(i) for i in ids if i != victim):
                    skipped += 1
                    continue
                node = svc.catalog.node(victim)
                killed_as[victim] = node.incarnation if node else ""
                workers[victim].kill()
                kills += 1
                workers[victim] = worker(nats_url, victim)
                procs.append(workers[victim])

        killer = asyncio.create_task(chaos())
        bodies = [load.body(max_tokens=30, timeout_ms=20_000) for _ in range(1000)]
        try:
            await load.run(bodies, concurrency=32)
        finally:
            finished.set()
            await killer
        await load.settle(svc)
        tally = load.tally()
        line = tally.assert_clean(
            f"worker chaos, {kills} kills ({skipped} ticks skipped), "
            f"failovers={svc.failovers} retries={svc.retries}"
        )
        circuits = {n: s.value for n, s in svc.breaker.all_states()}
        print(f"[worker chaos] circuits after: {circuits}")
        assert kills >= 3, f"the load ended before the chaos started: {line}"
        # No success-rate floor here: dispatches to a killed worker open its circuit and
        # its new incarnation inherits it, so after a few kills every worker can be
        # circuit-open for reset_timeout_s (all_unhealthy). Pinned deterministically by
        # test_contract_gaps.py::test_new_incarnation_starts_with_a_closed_circuit.
    await nc.close()
    await stop_gateway(svc, gw_nc)


async def test_hung_worker_opens_its_circuit_and_a_new_incarnation_closes_it(
    nats_url: str,
) -> None:
    """First-chunk timeouts move requests away from a hung node until its circuit opens.

    On recovery (asserted): the node restarts under the same id as a new incarnation,
    which starts with fresh health and a closed circuit and is served again.
    """
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=5, reset_timeout_s=3.0))
    cfg = GatewayConfig(
        first_chunk_timeout_s=0.4,
        stall_timeout_s=1.0,
        max_retries=3,
        probe_interval_s=0.2,
        strategy="round_robin",
    )
    # Health demotes a node after 3 failures (before the breaker's 5) and only a probe,
    # at most every check_interval_s, gives it traffic again: probe often.
    health = HealthChecker(HealthConfig(check_interval_s=0.5))
    svc, gw_nc = await gateway_in_process(nats_url, cfg, breaker=breaker, health=health)
    nc = await connect(nats_url)
    with processes() as procs:
        hung = worker(nats_url, "h1", "--hang")
        good = worker(nats_url, "w1")
        procs += [hung, good]
        await eventually(lambda: svc.catalog.node("h1") and svc.catalog.node("w1"), 30, "joined")
        load = await StreamLoad(nc, "m").start()

        # Rounds of 12 concurrent streams (round robin: 6 try h1) until h1's circuit opens.
        while breaker.state("h1") is not CircuitState.OPEN:
            assert len(load.records) < 600, f"circuit never opened: {breaker.failures('h1')}"
            await load.run([load.body(5, 10_000) for _ in range(12)], concurrency=12)
        assert breaker.failures("h1") >= 5
        opened = load.tally()
        served = {r.headers.get("Fed-Served-By") for r in load.records.values()}
        moved = sum(r.headers.get("Fed-Attempts") != "1" for r in load.records.values())
        print(
            f"[hung worker] circuit opened after {len(load.records)} requests, "
            f"{breaker.failures('h1')} failures, {moved} moved: {opened.line('hung')}"
        )
        assert opened.ok == opened.requests and served == {"w1"}, opened.line("hung")
        assert moved >= 5

        # Open: nothing is sent to h1 any more.
        before = _dispatches(svc, "h1")
        await load.run([load.body(5, 10_000) for _ in range(8)], concurrency=8)
        assert all(r.ok for r in load.records.values())
        if breaker.state("h1") is CircuitState.OPEN:
            assert _dispatches(svc, "h1") == before

        # Recovery: the same node id restarts as a healthy worker (a new incarnation).
        old = svc.catalog.node("h1")
        assert old is not None
        old_incarnation = old.incarnation
        hung.kill()
        procs.append(worker(nats_url, "h1"))
        await eventually(
            lambda: (n := svc.catalog.node("h1")) is not None and n.incarnation != old_incarnation,
            30,
            "h1 restarted",
        )
        # A new incarnation is a new process: it starts with a fresh health record and
        # a closed circuit, and gets traffic again at once.
        assert breaker.state("h1") is CircuitState.CLOSED
        rounds = 0
        while not any(r.headers.get("Fed-Served-By") == "h1" for r in load.records.values()):
            rounds += 1
            assert rounds < 200, "the restarted h1 never served"
            await load.run([load.body(5, 10_000) for _ in range(2)], concurrency=2)
        by_h1 = sum(r.headers.get("Fed-Served-By") == "h1" for r in load.records.values())
        await load.settle(svc)
        tally = load.tally()
        print(f"[hung worker] closed again after {by_h1} requests served by the new h1")
        tally.assert_clean("hung worker, whole run")
        assert by_h1 >= 1 and breaker.state("h1") is CircuitState.CLOSED
    await nc.close()
    await stop_gateway(svc, gw_nc)


def _dispatches(svc: GatewayService, node_id: str) -> int:
    """Dispatches this gateway has sent to ``node_id``."""
    return svc.stats.snapshot().per_node.get(node_id, {}).get("requests", 0)
