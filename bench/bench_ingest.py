"""Heartbeat ingest: the gateway's CPU with 1,000 and 10,000 simulated nodes at 1 Hz.

Starts a nats-server and one gateway process. A load generator (this process, uvloop)
publishes a heartbeat per simulated node per second, spread evenly over the second
(every 10 ms, the beats due so far), and answers the gateway's liveness pings for them
(``fed.node.*.ping``) as real nodes do. In a "busy" fleet every beat changes the node's
load signals (``in_flight`` and ``tokens_per_s`` alternate), so the router re-files the
node in its ordering each time (the expensive case); in a "steady" fleet the beats
repeat. One request for the simulated model is sent after the first warm-up so that the
router's ordering exists (it finds no responders and ends in an error: expected). The
gateway's CPU time (user + system, /proc/<pid>/stat) is read over a 10 s window (one
full health-probe cycle) and reported as a share of one core; the idle gateway is the
baseline.

``--candidate DIR`` runs a second gateway from another checkout (e.g. a patched copy);
both ingest the same heartbeats and are measured over the same windows.

Target: 10,000 busy nodes ≤ 25 % of one core.
Run: ``python -m bench.bench_ingest [--quick] [--candidate DIR]`` (~50 s; quick ~35 s).
Prints a table, then as its last line one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bench import common as c
from shared import messages as m
from shared.runtime import run
from shared.subjects import Subjects

PHASES = ((1_000, "busy"), (10_000, "busy"), (10_000, "steady"))
REGIONS = ("us-west", "us-east", "eu-west", "ap-south")
MAX_SHARE_10K = 0.25
TICK_S = 0.01


def fleet(n: int, busy: bool = True) -> list[tuple[str, tuple[bytes, bytes]]]:
    """(subject, two alternating heartbeat bodies) for simulated nodes ``sim-0..n-1``.

    ``busy``: the two bodies differ in load signals; else they are the same beat.
    """
    out = []
    models = (m.ModelInfo(model="sim", capabilities=("generate",)),)
    for i in range(n):
        node_id = f"sim-{i}"
        bodies = tuple(
            m.encode(
                m.Heartbeat(
                    node_id=node_id,
                    incarnation=f"inc-{i}",
                    region=REGIONS[i % len(REGIONS)],
                    models=models,
                    capacity=8,
                    in_flight=k,
                    cost=round((i % 100) / 100, 2),
                    interval_ms=1000,
                    tokens_per_s=50.0 + k,
                    started_ms=1,
                )
            )
            for k in ((0, 1) if busy else (0, 0))
        )
        out.append((c.SUBJECTS.heartbeat(node_id), (bodies[0], bodies[1])))
    return out


class LoadGen:
    """Publishes the fleet's heartbeats at 1 Hz per node, evenly spread, until stopped."""

    def __init__(self, nc: Client, beats: list[tuple[str, tuple[bytes, bytes]]]) -> None:
        self.nc = nc
        self.beats = beats
        self.sent = 0
        self.late_ticks = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        n, publish = len(self.beats), self.nc.publish
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not self._stop.is_set():
            due = int((loop.time() - t0) * n)
            if due - self.sent > n // 10:
                self.late_ticks += 1  # more than 100 ms behind schedule
            while self.sent < due:
                subject, bodies = self.beats[self.sent % n]
                await publish(subject, bodies[(self.sent // n) % 2])
                self.sent += 1
            await asyncio.sleep(TICK_S)

    def stop(self) -> None:
        self._stop.set()


async def answer_pings(nc: Client) -> None:
    """Answer the gateway's liveness pings for every simulated node, as a node would."""

    async def pong(msg: Msg) -> None:
        if msg.reply:
            await nc.publish(msg.reply, b"{}")

    await nc.subscribe(c.SUBJECTS.node_ping("*"), cb=pong, pending_msgs_limit=-1)
    await nc.flush()


async def node_count(nc: Client, timeout_s: float = 10) -> int:
    """How many nodes a gateway's catalog holds (``fed.gateway.stats``); -1 if no answer
    in time (a gateway behind on its heartbeats answers late: reported, not fatal)."""
    try:
        msg = await nc.request(c.SUBJECTS.gateway_stats, b"", timeout=timeout_s)
    except (NatsTimeout, NoRespondersError):
        return -1
    return int(json.loads(msg.data).get("nodes", -1))


async def cpu_shares(pids: dict[str, int], window_s: float) -> dict[str, float]:
    """CPU seconds per wall second of each process over the same ``window_s``."""
    cpu0, t0 = {k: c.cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - t0
    return {k: (c.cpu_seconds(p) - cpu0[k]) / elapsed for k, p in pids.items()}


async def measure(url: str, stack: c.Stack, pids: dict[str, int], quick: bool) -> dict[str, Any]:
    """Idle baseline, then each fleet size: warm up (all nodes known), then measure."""
    window_s, warm_s = (5.0, 3.0) if quick else (10.0, 4.0)
    nc = await c.connect(url)
    out: dict[str, Any] = {"window_s": window_s}
    try:
        await answer_pings(nc)
        deadline = time.monotonic() + 30
        while True:  # the gateway answers its control subjects once started
            stack.check_alive()
            if await node_count(nc, 1) >= 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not answering fed.gateway.stats")
            await asyncio.sleep(0.1)  # readiness poll under a deadline
        idle = await cpu_shares(pids, min(window_s, 4.0))
        out["idle"] = {"cpu_share": round(idle["gateway"], 4)}
        ordered = False
        for n, kind in PHASES:
            gen = LoadGen(nc, fleet(n, busy=kind == "busy"))
            task = asyncio.create_task(gen.run())
            try:
                await asyncio.sleep(warm_s)
                if not ordered:
                    # Build the router's ordering for the simulated model (the dispatch
                    # finds no responders: the request ends in an error, as expected).
                    roots = [c.SUBJECTS.public]
                    if "gateway_candidate" in pids:
                        roots.append(c.CANDIDATE_ROOT)
                    for root in roots:
                        with contextlib.suppress(NatsTimeout):
                            await nc.request(
                                Subjects(public=root).infer("generate"),
                                b'{"model":"sim","timeout_ms":1000}',
                                timeout=15,
                            )
                    ordered = True
                known = await node_count(nc)
                sent0, own0 = gen.sent, time.process_time()
                t0 = time.monotonic()
                shares = await cpu_shares(pids, window_s)
                share = shares["gateway"]
                elapsed = time.monotonic() - t0
                rate = (gen.sent - sent0) / elapsed
                loadgen = (time.process_time() - own0) / elapsed
                known_after = await node_count(nc)
            finally:
                gen.stop()
                await task
            out[f"n{n}_{kind}"] = {
                "cpu_share": round(share, 4),
                "cpu_share_minus_idle": round(share - out["idle"]["cpu_share"], 4),
                "heartbeats_per_s": round(rate),
                "cpu_us_per_heartbeat": round(share / rate * 1e6, 1) if rate else None,
                "nodes_known": [known, known_after],
                "loadgen_cpu_share": round(loadgen, 3),
                "loadgen_late_ticks": gen.late_ticks,
            }
            if "gateway_candidate" in shares:
                cand = shares["gateway_candidate"]
                out[f"n{n}_{kind}"]["candidate_cpu_share"] = round(cand, 4)
    finally:
        await nc.close()
    return out


async def in_process(n: int, n_rounds: int) -> dict[str, Any]:
    """Gateway CPU per heartbeat with NATS stubbed out: decode, catalog, router.

    Two ``GatewayService``s on stub connections (one per kind of fleet) each learn ``n``
    simulated nodes and route one request for their model (so the router's ordering
    exists); then passes of heartbeats over each fleet alternate, busy and steady; process
    CPU time per heartbeat, median of the rounds. Health probes are off here (they come
    in bursts every 10 s; the over-NATS windows include them).
    """
    import logging

    from gateway.service import GatewayService
    from shared.config import GatewayConfig

    logging.getLogger("fedgate").setLevel(logging.ERROR)  # no $SRV on a stub: expected
    services: dict[str, GatewayService] = {}
    runs: dict[str, Callable[[], Awaitable[float]]] = {}
    for kind in ("busy", "steady"):
        nc = c.StubNC()
        svc = services[kind] = GatewayService(nc, GatewayConfig(probe_interval_s=3600))  # type: ignore[arg-type]
        await svc.start()
        runs[kind] = _passes(nc, nc.callbacks[svc.subjects.heartbeat_all], fleet(n, kind == "busy"))
        await runs[kind]()  # every node known
        chosen = svc.router.route(m.InferRequest(capability="generate", model="sim"))
        svc.breaker.release(chosen.node_id)  # the ordering exists now; nothing dispatched
    res = await c.rounds(runs, n_rounds)
    for svc in services.values():
        await svc.stop(grace_s=0.1)
    return {
        "nodes": n,
        **{f"{k}_us_per_heartbeat": round(c.median(v), 2) for k, v in res.items()},
        **{f"{k}_us_per_heartbeat_rounds": [round(x, 2) for x in v] for k, v in res.items()},
    }


def _passes(
    nc: c.StubNC,
    on_heartbeat: Callable[[Msg], Awaitable[None]],
    beats: list[tuple[str, tuple[bytes, bytes]]],
) -> Callable[[], Awaitable[float]]:
    """One pass of heartbeats over the fleet per call (bodies alternate between passes);
    returns CPU µs per heartbeat."""
    count = 0

    async def one_pass() -> float:
        nonlocal count
        count += 1
        msgs = [Msg(nc, subject=s, data=b[count % 2]) for s, b in beats]  # type: ignore[arg-type]
        t0 = time.process_time()
        for i, msg in enumerate(msgs):
            await on_heartbeat(msg)
            if i % 256 == 0:
                await asyncio.sleep(0)  # the service's own loops run as they would
        return (time.process_time() - t0) / len(msgs) * 1e6

    return one_pass


def in_process_in(tree: str | None, quick: bool) -> dict[str, Any]:
    """``in_process`` in a fresh process, with the gateway code from ``tree`` if given."""
    return c.json_from_module_in(tree, "bench.bench_ingest", "--in-process-only", quick)


def report(fig: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the target line; return the target check."""
    print(
        f"{'fleet':>7} {'beats':<6} {'hb/s':>7} {'gateway CPU':>12} {'µs/heartbeat':>13}"
        f" {'nodes known':>12}"
    )
    print(f"{'idle':>7} {'':<6} {0:>7} {fig['idle']['cpu_share'] * 100:>11.1f}%")
    for n, kind in PHASES:
        f = fig[f"n{n}_{kind}"]
        print(
            f"{n:>7} {kind:<6} {f['heartbeats_per_s']:>7} {f['cpu_share'] * 100:>11.1f}%"
            f" {f['cpu_us_per_heartbeat']:>13} {f['nodes_known'][1]:>12}"
        )
        if "candidate_cpu_share" in f:
            print(f"{'':>7} {'':<6} {'':>7} {f['candidate_cpu_share'] * 100:>11.1f}%  (candidate)")
    print("in-process (NATS stubbed out), 10,000 nodes, CPU µs per heartbeat:")
    for key in ("in_process", "in_process_candidate"):
        if key in fig:
            ip = fig[key]
            print(
                f"  {key:<21} busy {ip['busy_us_per_heartbeat']:.1f}"
                f" (= {ip['busy_us_per_heartbeat']:.0f} % of a core at 10,000/s),"
                f" steady {ip['steady_us_per_heartbeat']:.1f}"
            )
    return {
        "ingest_10k_cpu_share": c.target(
            "gateway CPU share of one core, 10,000 busy nodes at 1 Hz",
            fig["n10000_busy"]["cpu_share"], "<=", MAX_SHARE_10K,
        )
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    args = c.parse_args(
        __doc__,
        argv,
        candidate=True,
        flags={"--in-process-only": "only the in-process measurement (one JSON line)"},
    )
    if args.in_process_only:
        fig_ip: dict[str, Any] = {}

        async def ip_only() -> None:
            fig_ip.update(await in_process(10_000, 3 if args.quick else 5))

        run(ip_only())
        print(json.dumps(fig_ip))
        return 0
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    with c.Stack() as stack:
        pids = {"gateway": stack.gateway().pid}
        if args.candidate:
            pids["gateway_candidate"] = stack.gateway(
                "--public-root", c.CANDIDATE_ROOT, tree=args.candidate
            ).pid
        fig: dict[str, Any] = {}

        async def go() -> None:
            fig.update(await measure(stack.url, stack, pids, args.quick))

        run(go())
    fig["in_process"] = in_process_in(None, args.quick)
    if args.candidate:
        fig["in_process_candidate"] = in_process_in(args.candidate, args.quick)
    fig["targets"] = report(fig)
    c.emit("ingest", fig, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
