"""Fair share under overload: two tenants, one sending 10x the other, 3 gateways.

Starts a nats-server, one synthetic worker with capacity 2 (20 ms to the first token,
10 ms a token, 8 tokens: about 0.1 s a request, so the fleet serves about 20 requests/s)
and two sets of 3 ``fedgate gateway`` processes: ``fair`` (fair share on, the default)
and ``fifo`` (``--no-fair-share``: oldest first at each gateway, as before), each one
queue group on its own public root. Tenant ``a`` keeps 20 requests in flight, tenant
``b`` 2 (closed loops: the next request as soon as one is answered; after a refusal a
caller backs off 50 ms), both through the queue group, so the three gateways share both
tenants' requests. After ``--warmup`` answers, the next ``--completions`` are counted
per tenant: ``b`` is backlogged the whole time, so its fair share is one half, and
oldest first gives it about 2/22. The sets run one after the other, ``--rounds`` times.

Run: ``python -m bench.bench_fairshare [--completions N] [--rounds R]`` (about 20 s a
round); prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from bench import common as c
from shared.runtime import run

MAX_TOKENS = 8
LANES = {"a": 20, "b": 2}
"""Requests each tenant keeps in flight."""
BACKOFF_S = 0.05


def body(tenant: str, lane: int, i: int) -> bytes:
    """One request of ``tenant`` (the same size for every tenant)."""
    text = f"{tenant} {lane:03d} {i:06d}"
    return json.dumps(
        {"input": text, "tenant_id": tenant, "params": {"max_tokens": MAX_TOKENS}}
    ).encode()


async def measure(
    nc: Client,
    subject: str,
    lanes: dict[str, int],
    warmup: int,
    completions: int,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Closed-loop lanes per tenant on ``subject`` until ``warmup + completions``
    answers; the answers after the warmup counted per tenant, refusals per tenant."""
    counted: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    total = 0
    stop = asyncio.Event()
    window: list[float] = []

    async def lane(tenant: str, k: int) -> None:
        nonlocal total
        i = 0
        while not stop.is_set():
            i += 1
            try:
                msg = await nc.request(subject, body(tenant, k, i), timeout=timeout_s)
            except NatsTimeout:
                refused[tenant] += 1
                continue
            if (msg.headers or {}).get("Fed-Error"):
                refused[tenant] += 1
                await asyncio.sleep(BACKOFF_S)  # sleep-ok: a caller's backoff after a 429
                continue
            total += 1
            if total == warmup:
                window.append(time.monotonic())
            elif warmup < total <= warmup + completions:
                counted[tenant] += 1
                if total == warmup + completions:
                    window.append(time.monotonic())
                    stop.set()

    lanes_ = [lane(t, k) for t, n in lanes.items() for k in range(n)]
    await asyncio.wait_for(asyncio.gather(*lanes_), timeout_s * 2)
    seconds = window[1] - window[0] if len(window) == 2 else float("nan")
    n = sum(counted.values())
    return {
        "completions": dict(counted),
        "share": {t: round(counted[t] / n, 3) for t in lanes},
        "refused": dict(refused),
        "rps": round(n / seconds, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import nats

    with c.Stack() as stack:
        stack.worker("--ttft-ms", "20", "--token-interval-ms", "10", capacity=2)
        for root, extra in (("fair", ()), ("fifo", ("--no-fair-share",))):
            for k in range(3):
                stack.gateway("--public-root", root, "--gateway-id", f"{root}-{k}", *extra)
        nc = await nats.connect(stack.url)
        for root in ("fair", "fifo"):
            await c.wait_ready(nc, f"{root}.generate", body("a", 0, 0), stack)
        runs: dict[str, list[dict[str, Any]]] = {"fair": [], "fifo": []}
        for _ in range(args.rounds):
            for root in ("fair", "fifo"):
                subject = f"{root}.generate"
                runs[root].append(await measure(nc, subject, LANES, args.warmup, args.completions))
        await nc.close()
    print(f"{'set':>5} {'b share':>8} {'a':>5} {'b':>5} {'refused a/b':>12} {'req/s':>6}")
    figures: dict[str, Any] = {}
    for root, results in runs.items():
        for r in results:
            done, ref = r["completions"], r["refused"]
            print(
                f"{root:>5} {r['share']['b']:>8.3f} {done.get('a', 0):>5} {done.get('b', 0):>5}"
                f" {ref.get('a', 0):>5}/{ref.get('b', 0):<6} {r['rps']:>6}"
            )
        figures[root] = {
            "b_share": c.median([r["share"]["b"] for r in results]),
            "rps": c.median([r["rps"] for r in results]),
            "refused": sum(sum(r["refused"].values()) for r in results),
            "runs": results,
        }
    return figures


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--warmup", type=int, default=40, help="answers not counted")
    parser.add_argument("--completions", type=int, default=200, help="answers counted")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    c.emit("fairshare", run(main(args)), c.machine())


if __name__ == "__main__":
    cli()
