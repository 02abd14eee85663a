"""Request overhead: a worker called directly vs through the gateway vs through a bare relay.

Starts a nats-server, one synthetic worker (no delays), one gateway, one gateway with
tracing on (``OTEL_TRACES_EXPORTER=console`` to /dev/null, on ``infertr.>``) and the bare
relay (``bench/relay.py``), all real processes. The client (this process, raw nats-py
``request()`` on uvloop) times one-token requests, round-robin over the variants:
sequential (p50/p99; "added" = variant − direct in the same round) and with 64 in
flight (requests/s). Figures are medians of the rounds.

The CPU time the hop process (gateway, relay) spends per request at 64 in flight is
read from /proc: unlike latency and throughput, it hardly depends on what else runs on
a shared machine. ``--candidate DIR`` adds a gateway run from another checkout (e.g. a
patched copy of the tree) as one more variant, measured in the same rounds.

Targets: gateway added p50 ≤ 1.25 × the relay's; gateway req/s at 64 in flight ≥ 0.9 ×
the relay's. Run: ``python -m bench.bench_overhead [--quick] [--candidate DIR]``
(~90 s; quick ~30 s). Prints a table, then as its last line one JSON object
(microseconds, requests/s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import common as c
from shared import headers as h
from shared import messages as m
from shared.runtime import run
from shared.subjects import Subjects

REQUEST = b'{"input":"bench","params":{"max_tokens":1}}'
IN_FLIGHT = 64
MAX_ADDED_RATIO = 1.25
MIN_RPS_RATIO = 0.9


class Variant:
    """One way to reach the worker: a subject, a body maker, the hop's process id."""

    def __init__(self, subject: str, body: Callable[[], bytes], pid: int | None = None) -> None:
        self.subject = subject
        self.body = body
        self.pid = pid
        """The process between client and worker (its CPU time is measured), if any."""


def variants(pids: dict[str, int]) -> dict[str, Variant]:
    """direct (a dispatch to the worker's inbox), gateway, relay, and any in ``pids``
    among gateway_traced and gateway_candidate."""
    ids = itertools.count()
    out = {
        "direct": Variant(
            c.SUBJECTS.node_infer(c.NODE_ID),
            lambda: c.dispatch_body(REQUEST, f"d{next(ids)}"),
        ),
        "gateway": Variant(c.SUBJECTS.infer("generate"), lambda: REQUEST, pids.get("gateway")),
        "relay": Variant(
            Subjects(public=c.RELAY_ROOT).infer("generate"), lambda: REQUEST, pids.get("relay")
        ),
    }
    for name, root in (("gateway_traced", c.TRACED_ROOT), ("gateway_candidate", c.CANDIDATE_ROOT)):
        if name in pids:
            out[name] = Variant(
                Subjects(public=root).infer("generate"), lambda: REQUEST, pids[name]
            )
    return out


async def sequential(nc: Client, v: Variant, n: int) -> dict[str, Any]:
    """n requests one after another: latencies (µs) and the gateway's own Fed-Overhead-Us."""
    lat: list[float] = []
    own: list[float] = []
    errors = 0
    request, clock = nc.request, time.perf_counter_ns
    for _ in range(n):
        body = v.body()
        t0 = clock()
        msg = await request(v.subject, body, timeout=5)
        lat.append((clock() - t0) / 1000)
        if not c.is_result(msg):
            errors += 1
        elif msg.headers and h.OVERHEAD_US in msg.headers:
            own.append(float(msg.headers[h.OVERHEAD_US]))
    return {"lat": lat, "own": own, "errors": errors}


async def concurrent(nc: Client, v: Variant, total: int, in_flight: int) -> dict[str, Any]:
    """``total`` requests with ``in_flight`` outstanding at any time: requests/s."""
    todo = iter(range(total))
    errors = 0
    request = nc.request
    cpu0 = c.cpu_seconds(v.pid) if v.pid else 0.0

    async def lane() -> None:
        nonlocal errors
        for _ in todo:
            msg = await request(v.subject, v.body(), timeout=10)
            if not c.is_result(msg):
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    rps = total / (time.perf_counter() - t0)
    cpu_us = (c.cpu_seconds(v.pid) - cpu0) / total * 1e6 if v.pid else None
    return {"rps": rps, "errors": errors, "hop_cpu_us": cpu_us}


# -- in-process hot path -----------------------------------------------------------


class _NoopExporter:
    """A span exporter that drops everything (tracing on, export cost ~0)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


async def hot_path(n: int, n_rounds: int) -> dict[str, Any]:
    """Python CPU per request of the gateway's and the relay's callbacks, NATS stubbed out.

    Each request is ``_on_request`` (decode, route, dispatch) then ``_on_reply`` (relay
    the result, finish); the relay's two callbacks likewise. The cost of building the
    fake messages is measured alone and subtracted. Tracing off vs on (a no-op exporter)
    alternates with the others in the same rounds.
    """
    import logging

    from bench.relay import Relay
    from gateway.service import GatewayService
    from shared import telemetry

    logging.getLogger("fedgate").setLevel(logging.ERROR)  # no $SRV on a stub: expected
    gw_nc, relay_nc = c.StubNC(), c.StubNC()
    svc = GatewayService(gw_nc)  # type: ignore[arg-type]
    await svc.start()
    heartbeat = m.encode(
        m.Heartbeat(
            node_id=c.NODE_ID,
            incarnation="hot",
            capacity=1000,
            models=(m.ModelInfo(model=c.MODEL, capabilities=("generate",)),),
        )
    )
    await gw_nc.callbacks[svc.subjects.heartbeat_all](
        Msg(gw_nc, subject=svc.subjects.heartbeat(c.NODE_ID), data=heartbeat)  # type: ignore[arg-type]
    )
    relay = Relay(relay_nc, c.NODE_ID)  # type: ignore[arg-type]
    result = m.encode(
        m.Result(
            request_id="x", model=c.MODEL, output="alpha ", served_by=c.NODE_ID,
            region="default", tokens=1, latency_ms=0.01, attempt=1,
        )
    )  # fmt: skip
    result_headers = {h.TOKENS: "1"}
    subject = svc.subjects.infer("generate")

    def pair(
        nc: c.StubNC, on_request: Callable[[Msg], Awaitable[None]], on_reply: Any
    ) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            t0 = time.process_time()
            for i in range(n):
                await on_request(Msg(nc, subject=subject, reply=f"_INBOX.c.{i}", data=REQUEST))  # type: ignore[arg-type]
                if on_reply is not None:
                    msg = Msg(nc, subject=nc.last_reply, data=result, headers=result_headers)  # type: ignore[arg-type]
                    await on_reply(msg)
                if i % 64 == 0:
                    await asyncio.sleep(0)  # let the sweeper run (decisions, deadlines)
            return (time.process_time() - t0) / n * 1e6

        return timed

    async def nothing(_: Msg) -> None:
        pass

    gw = pair(gw_nc, gw_nc.callbacks[svc.subjects.infer_all], gw_nc.callbacks[svc._inbox + ".>"])
    tracing_ready = telemetry.setup("fedgate-bench", exporter=_NoopExporter())
    telemetry.enabled = False

    async def gw_off() -> float:
        telemetry.enabled = False
        return await gw()

    async def gw_on() -> float:
        telemetry.enabled = tracing_ready
        try:
            return await gw()
        finally:
            telemetry.enabled = False

    variants = {
        "messages_only": pair(relay_nc, nothing, nothing),
        "gateway": gw_off,
        "gateway_tracing_on": gw_on,
        "relay": pair(relay_nc, relay.on_request, relay.on_reply),
    }
    for v in variants.values():  # warm-up
        await v()
    ok = svc.control.stats_view().get("successful_requests", 0)
    if ok < 2 * n:  # off and on, each n requests
        raise RuntimeError(f"hot path: only {ok} of {2 * n} requests succeeded")
    res = await c.rounds(variants, n_rounds)
    await svc.stop(grace_s=0.1)
    base = c.median(res.pop("messages_only"))
    out: dict[str, Any] = {"requests_per_round": n, "messages_only_us": round(base, 2)}
    for k, rs in res.items():
        out[f"{k}_us_per_req"] = round(c.median(rs) - base, 2)
        out[f"{k}_us_per_req_rounds"] = [round(r - base, 2) for r in rs]
    out["gateway_vs_relay"] = round(out["gateway_us_per_req"] / out["relay_us_per_req"], 2)
    out["tracing_on_minus_off_us"] = round(
        out["gateway_tracing_on_us_per_req"] - out["gateway_us_per_req"], 2
    )
    return out


def hot_path_in(tree: str | None, quick: bool) -> dict[str, Any]:
    """``hot_path`` in a fresh process, with the gateway code from ``tree`` if given."""
    return c.json_from_module_in(tree, "bench.bench_overhead", "--hot-path-only", quick)


# -- over NATS ----------------------------------------------------------------------


async def measure(url: str, stack: c.Stack, quick: bool, pids: dict[str, int]) -> dict[str, Any]:
    """Warm up, then alternate the variants for several rounds; return the figures."""
    n_rounds, n_seq, n_conc = (3, 300, 1500) if quick else (7, 600, 3000)
    nc = await c.connect(url)
    try:
        vs = variants(pids)
        for v in vs.values():
            await c.wait_ready(nc, v.subject, v.body, stack)
        for v in vs.values():  # warm-up: caches, lazy imports, orderings
            await sequential(nc, v, 200)
            await concurrent(nc, v, 500, IN_FLIGHT)

        def seq_of(v: Variant) -> Callable[[], Awaitable[Any]]:
            return lambda: sequential(nc, v, n_seq)

        def conc_of(v: Variant) -> Callable[[], Awaitable[Any]]:
            return lambda: concurrent(nc, v, n_conc, IN_FLIGHT)

        quiet = list(pids.values())

        async def settle() -> None:
            await c.settle(quiet)

        await settle()
        seq = await c.rounds({k: seq_of(v) for k, v in vs.items()}, n_rounds, settle)
        conc = await c.rounds({k: conc_of(v) for k, v in vs.items()}, n_rounds, settle)
    finally:
        await nc.close()
    return summarise(seq, conc, n_rounds, n_seq, n_conc)


def summarise(
    seq: dict[str, list[Any]], conc: dict[str, list[Any]], n_rounds: int, n_seq: int, n_conc: int
) -> dict[str, Any]:
    """Per-round p50s and ratios, then medians over the rounds."""
    names = list(seq)
    p50 = {k: [c.pct(r["lat"], 0.5) for r in seq[k]] for k in names}
    out: dict[str, Any] = {"rounds": n_rounds, "seq_per_round": n_seq, "conc_per_round": n_conc}
    variants_out: dict[str, Any] = {}
    for k in names:
        every = [x for r in seq[k] for x in r["lat"]]
        own = [x for r in seq[k] for x in r["own"]]
        added = [p50[k][i] - p50["direct"][i] for i in range(n_rounds)]
        variants_out[k] = {
            "p50_us": round(c.median(p50[k]), 1),
            "p99_us": round(c.median([c.pct(r["lat"], 0.99) for r in seq[k]]), 1),
            "p99_all_us": round(c.pct(every, 0.99), 1),
            "added_p50_us": round(c.median(added), 1),
            "rps_64": round(c.median([r["rps"] for r in conc[k]]), 0),
            "rps_64_rounds": [round(r["rps"]) for r in conc[k]],
            "hop_cpu_us_per_req": (
                round(c.median([r["hop_cpu_us"] for r in conc[k]]), 1)
                if conc[k][0]["hop_cpu_us"] is not None
                else None
            ),
            "errors": sum(r["errors"] for r in seq[k]) + sum(r["errors"] for r in conc[k]),
        }
        if own:
            variants_out[k]["self_reported_overhead_p50_us"] = c.pct(own, 0.5)
    out["variants"] = variants_out
    relay_added = [p50["relay"][i] - p50["direct"][i] for i in range(n_rounds)]
    ratios: dict[str, Any] = {}
    for k in names:
        if k.startswith("gateway"):
            per_round = [
                (p50[k][i] - p50["direct"][i]) / relay_added[i]
                for i in range(n_rounds)
                if relay_added[i] > 0
            ]
            rps = [conc[k][i]["rps"] / conc["relay"][i]["rps"] for i in range(n_rounds)]
            ratios[k] = {
                "added_p50_vs_relay": round(c.median(per_round), 3) if per_round else None,
                "added_p50_vs_relay_rounds": [round(x, 3) for x in per_round],
                "rps_64_vs_relay": round(c.median(rps), 3),
                "rps_64_vs_relay_rounds": [round(x, 3) for x in rps],
            }
    out["ratios"] = ratios
    return out


def report(fig: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the target lines; return the target checks."""
    print(
        f"{'variant':<18} {'p50 µs':>8} {'p99 µs':>8} {'added p50':>10} {'req/s @64':>10}"
        f" {'hop CPU µs/req':>15} {'errors':>6}"
    )
    for name, v in fig["variants"].items():
        cpu = v["hop_cpu_us_per_req"]
        print(
            f"{name:<18} {v['p50_us']:>8.1f} {v['p99_us']:>8.1f} {v['added_p50_us']:>+10.1f}"
            f" {v['rps_64']:>10.0f} {'-' if cpu is None else f'{cpu:.0f}':>15} {v['errors']:>6}"
        )
    for name, r in fig["ratios"].items():
        print(
            f"{name}: added p50 / relay's = {r['added_p50_vs_relay']} "
            f"(rounds {r['added_p50_vs_relay_rounds']}); "
            f"req/s@64 / relay's = {r['rps_64_vs_relay']} (rounds {r['rps_64_vs_relay_rounds']})"
        )
    print("in-process (NATS stubbed out), Python CPU µs per request, median of rounds:")
    for key in ("hot_path", "hot_path_candidate"):
        if key in fig:
            hp = fig[key]
            print(
                f"  {key:<19} gateway {hp['gateway_us_per_req']:.1f}, relay "
                f"{hp['relay_us_per_req']:.1f} (x{hp['gateway_vs_relay']}), gateway with "
                f"tracing on {hp['gateway_tracing_on_us_per_req']:.1f} "
                f"({hp['tracing_on_minus_off_us']:+.1f})"
            )
    gw = fig["ratios"]["gateway"]
    targets = {
        "overhead_added_p50_ratio": c.target(
            "gateway added p50 / relay added p50",
            gw["added_p50_vs_relay"] or float("inf"), "<=", MAX_ADDED_RATIO,
        ),
        "overhead_rps64_ratio": c.target(
            "gateway req/s@64 / relay req/s@64", gw["rps_64_vs_relay"], ">=", MIN_RPS_RATIO
        ),
    }  # fmt: skip
    if "gateway_traced" in fig["ratios"]:
        tr = fig["variants"]["gateway_traced"]["p50_us"] - fig["variants"]["gateway"]["p50_us"]
        print(f"tracing on costs {tr:+.1f} µs at p50 (tracing off: see gateway vs relay)")
        fig["tracing_on_minus_off_p50_us"] = round(tr, 1)
    return targets


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    args = c.parse_args(
        __doc__,
        argv,
        candidate=True,
        flags={"--hot-path-only": "only the in-process measurement (one JSON line)"},
    )
    n_hot, rounds_hot = (1000, 3) if args.quick else (3000, 7)
    if args.hot_path_only:
        hot: dict[str, Any] = {}

        async def hot_only() -> None:
            hot.update(await hot_path(n_hot, rounds_hot))

        run(hot_only())
        print(json.dumps(hot))
        return 0
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    with c.Stack() as stack:
        traced_env = {"OTEL_TRACES_EXPORTER": "console"}
        pids = {
            "worker": stack.worker().pid,
            "gateway": stack.gateway().pid,
            "gateway_traced": stack.gateway("--public-root", c.TRACED_ROOT, env=traced_env).pid,
            "relay": stack.relay().pid,
        }
        if args.candidate:
            pids["gateway_candidate"] = stack.gateway(
                "--public-root", c.CANDIDATE_ROOT, tree=args.candidate
            ).pid
        fig: dict[str, Any] = {}

        async def go() -> None:
            fig.update(await measure(stack.url, stack, args.quick, pids))

        run(go())
    fig["hot_path"] = hot_path_in(None, args.quick)
    if args.candidate:
        fig["hot_path_candidate"] = hot_path_in(args.candidate, args.quick)
    targets = report(fig)
    fig["targets"] = targets
    c.emit("overhead", fig, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
