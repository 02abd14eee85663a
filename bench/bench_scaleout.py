"""Scale-out: requests/s through 1, 2 and 3 gateways, and what the shared parts cost idle.

Starts a nats-server, one synthetic worker (no delays) and three sets of ``fedgate
gateway`` processes — 1, 2 and 3 gateways, each set one queue group on its own public
root (``s1``, ``s2``, ``s3``), shared outcomes on — all real processes, started once. The
client (this process, raw nats-py ``request()``) keeps ``IN_FLIGHT`` one-token requests
in flight for ``--seconds`` per round and set, the sets interleaved in every round.

Also: the CPU time per second of each idle gateway of the 3-gateway set (heartbeats,
sweeper, shared outcomes, canaries) read from /proc over ``--idle`` seconds.

On this machine (2 cores) the client, nats-server, the worker and the gateways share two
cores: more gateways cannot add CPU, so the figures show what spreading costs, not a
speed-up. Run: ``python -m bench.bench_scaleout [--seconds S] [--rounds R] [--idle S]``
(about 40 s); prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from nats.aio.client import Client

from bench import common as c
from shared.runtime import run

IN_FLIGHT = 64
REQUEST = b'{"input":"bench","params":{"max_tokens":1}}'


async def _rate(nc: Client, subject: str, seconds: float) -> tuple[float, int]:
    """Requests/s with IN_FLIGHT in flight for ``seconds``, and the errors seen."""
    done = errors = 0
    stop = time.monotonic() + seconds

    async def lane() -> None:
        nonlocal done, errors
        while time.monotonic() < stop:
            msg = await nc.request(subject, REQUEST, timeout=10)
            if msg.headers and msg.headers.get("Fed-Error"):
                errors += 1
            else:
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return done / (time.monotonic() - started), errors


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import nats

    with c.Stack() as stack:
        stack.worker()
        pids: dict[int, list[int]] = {}
        for n in (1, 2, 3):
            pids[n] = [
                stack.gateway("--public-root", f"s{n}", "--gateway-id", f"g{n}-{k}").pid
                for k in range(n)
            ]
        nc = await nats.connect(stack.url)
        # every set is up: one request each answered
        deadline = time.monotonic() + 30
        for n in (1, 2, 3):
            while True:
                try:
                    await nc.request(f"s{n}.generate", REQUEST, timeout=2)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)  # polling under a deadline
        for n in (1, 2, 3):  # warm-up (not counted): connections, caches, JIT-free paths
            await _rate(nc, f"s{n}.generate", min(1.0, args.seconds))
        rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
        errs = 0
        for _ in range(args.rounds):
            for n in (1, 2, 3):
                rate, e = await _rate(nc, f"s{n}.generate", args.seconds)
                rates[n].append(rate)
                errs += e
        # idle cost of the 3-gateway set (the others idle too: measured per gateway)
        before = {p: c.cpu_seconds(p) for p in pids[3]}
        await asyncio.sleep(args.idle)  # the measurement window itself
        idle_ms_per_s = [(c.cpu_seconds(p) - before[p]) * 1000 / args.idle for p in pids[3]]
        await nc.close()
    medians = {n: c.median(v) for n, v in rates.items()}
    print(f"{'gateways':>8} {'req/s (median)':>16} {'rounds':>30}")
    for n in (1, 2, 3):
        print(f"{n:>8} {medians[n]:>16.0f} {[round(x) for x in rates[n]]!s:>30}")
    idle = sum(idle_ms_per_s) / len(idle_ms_per_s)
    print(f"idle gateway CPU: {idle:.2f} ms per second each (3 gateways, shared outcomes on)")
    print(f"errors: {errs}")
    return {
        "rps": {str(n): round(v, 1) for n, v in medians.items()},
        "idle_cpu_ms_per_s": round(idle, 3),
        "errors": errs,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    args = parser.parse_args()
    figures = run(main(args))
    c.emit("scaleout", figures, c.machine())


if __name__ == "__main__":
    cli()
