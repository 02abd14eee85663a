"""What claiming request ids in JetStream KV adds to a request (gateway/idempotency.py).

Starts a nats-server with JetStream, one synthetic worker (no delays) and two gateway
processes: one with ``idempotency`` on (``infer.>``), one with it off (``--no-idempotency``,
on ``inferoff.>``). The client (this process, raw nats-py ``request()``) sends one-token
requests, each with a fresh caller-given ``request_id`` (what fedgate's client always
sends: every such request is claimed), alternating on and off round by round:
sequential (p50, p99; "added" = on − off in the same round) and 64 in flight
(requests/s, and the gateway's CPU per request from /proc). Figures are medians of the
rounds. Run: ``python -m bench.bench_idempotency [--quick]`` (~60 s; quick ~25 s).
Prints a summary, then as its last line one JSON object (microseconds, requests/s).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from nats.aio.client import Client

from bench import common as c
from shared.runtime import run
from shared.subjects import Subjects

OFF_ROOT = "inferoff"
IN_FLIGHT = 64
_ids = itertools.count()


def body() -> bytes:
    """A one-token request with a fresh caller-given id."""
    return b'{"input":"bench","request_id":"b%d","params":{"max_tokens":1}}' % next(_ids)


async def sequential(nc: Client, subject: str, n: int) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    clock = time.perf_counter_ns
    for _ in range(n):
        data = body()
        t0 = clock()
        msg = await nc.request(subject, data, timeout=5)
        lat.append((clock() - t0) / 1000)
        errors += not c.is_result(msg)
    return {"p50": c.pct(lat, 0.5), "p99": c.pct(lat, 0.99), "errors": errors}


async def concurrent(nc: Client, subject: str, pid: int, total: int) -> dict[str, Any]:
    todo = iter(range(total))
    errors = 0
    cpu0 = c.cpu_seconds(pid)

    async def lane() -> None:
        nonlocal errors
        for _ in todo:
            errors += not c.is_result(await nc.request(subject, body(), timeout=10))

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    rps = total / (time.perf_counter() - t0)
    return {"rps": rps, "cpu_us": (c.cpu_seconds(pid) - cpu0) / total * 1e6, "errors": errors}


async def measure(stack: c.Stack, pids: dict[str, int], quick: bool) -> dict[str, Any]:
    n_rounds, n_seq, n_conc = (3, 300, 1500) if quick else (7, 600, 3000)
    subjects = {"on": Subjects().infer("generate"), "off": Subjects(OFF_ROOT).infer("generate")}
    nc = await c.connect(stack.url)
    try:
        for subject in subjects.values():
            await c.wait_ready(nc, subject, body, stack)
            await sequential(nc, subject, 200)  # warm-up
            await concurrent(nc, subject, pids["worker"], 500)
        quiet = list(pids.values())

        async def settle() -> None:
            await c.settle(quiet)

        seq = await c.rounds(
            {k: (lambda s=s: sequential(nc, s, n_seq)) for k, s in subjects.items()},
            n_rounds, settle,
        )  # fmt: skip
        conc = await c.rounds(
            {k: (lambda k=k, s=s: concurrent(nc, s, pids[k], n_conc)) for k, s in subjects.items()},
            n_rounds, settle,
        )  # fmt: skip
    finally:
        await nc.close()
    added = [on["p50"] - off["p50"] for on, off in zip(seq["on"], seq["off"], strict=True)]
    out: dict[str, Any] = {"rounds": n_rounds, "seq_per_round": n_seq, "conc_per_round": n_conc}
    for k in subjects:
        out[k] = {
            "p50_us": round(c.median([r["p50"] for r in seq[k]]), 1),
            "p99_us": round(c.median([r["p99"] for r in seq[k]]), 1),
            "rps_64": round(c.median([r["rps"] for r in conc[k]])),
            "gateway_cpu_us_per_req": round(c.median([r["cpu_us"] for r in conc[k]]), 1),
            "errors": sum(r["errors"] for r in seq[k] + conc[k]),
        }
    out["added_p50_us"] = round(c.median(added), 1)
    out["added_p50_us_rounds"] = [round(a, 1) for a in added]
    out["rps_ratio"] = round(out["on"]["rps_64"] / out["off"]["rps_64"], 3)
    out["added_cpu_us_per_req"] = round(
        out["on"]["gateway_cpu_us_per_req"] - out["off"]["gateway_cpu_us_per_req"], 1
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = c.parse_args(__doc__, argv)
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    stack = c.Stack()
    stack.server.jetstream = True  # the bucket fedgate_requests
    with stack:
        pids = {
            "worker": stack.worker().pid,
            "on": stack.gateway().pid,
            "off": stack.gateway("--public-root", OFF_ROOT, "--no-idempotency").pid,
        }
        fig: dict[str, Any] = {}

        async def go() -> None:
            fig.update(await measure(stack, pids, args.quick))

        run(go())
    for k in ("on", "off"):
        v = fig[k]
        print(
            f"idempotency {k:>3}: p50 {v['p50_us']:8.1f} µs  p99 {v['p99_us']:8.1f} µs  "
            f"{v['rps_64']:6d} req/s @64  gateway CPU {v['gateway_cpu_us_per_req']:6.1f} µs/req"
        )
    print(
        f"claiming adds {fig['added_p50_us']:+.1f} µs at p50 "
        f"(rounds {fig['added_p50_us_rounds']}), "
        f"{fig['added_cpu_us_per_req']:+.1f} µs of gateway CPU per request, "
        f"req/s ratio {fig['rps_ratio']}"
    )
    c.emit("idempotency", fig, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
