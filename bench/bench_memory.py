"""Memory: gateway RSS growth per concurrently open stream (1,000 open streams).

Starts a nats-server, one synthetic worker with a long token interval (1 token/s, so
streams stay open), one gateway and the bare relay. For each of gateway and relay: a
light warm-up (20 short streams), the process's RSS (VmRSS, /proc/<pid>/status) as the
baseline, then 1,000 streams opened at once (``params.max_tokens`` = 8: ~7 s each); RSS
once every stream has its first chunk plus ~1 s, and again ~3 chunks later (what
per-stream state grows with each relayed chunk). Per-stream figure = (RSS with the
streams open − baseline) / 1,000.

Target: ≤ 20 KB of gateway memory per open stream.
Run: ``python -m bench.bench_memory [--quick]`` (~30 s; quick ~20 s).
Prints a table, then as its last line one JSON object (bytes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import common as c
from bench.bench_streaming import StreamClient
from shared.runtime import run
from shared.subjects import Subjects

STREAMS = 1_000
TOKEN_INTERVAL_MS = 1000
MAX_TOKENS = 8
MAX_PER_STREAM = 20 * 1024
REQUEST = b'{"input":"bench","stream":true,"params":{"max_tokens":%d}}'


async def one_variant(
    sc: StreamClient, subject: str, pid: int, streams: int, later_s: float
) -> dict[str, Any]:
    """Baseline RSS, open ``streams`` streams, RSS with them open, RSS later."""
    await asyncio.gather(*(sc.stream(subject, REQUEST % 2) for _ in range(20)))  # warm-up
    await asyncio.sleep(0.5)
    base = c.rss_bytes(pid)
    body = REQUEST % MAX_TOKENS
    tasks = [asyncio.create_task(sc.stream(subject, body)) for _ in range(streams)]
    t0 = time.monotonic()
    while True:
        started = sum(1 for s in sc.open.values() if s.chunks)
        if started >= streams or time.monotonic() - t0 > 20:
            break
        await asyncio.sleep(0.05)  # polling the client's own counters
    started_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    chunks0 = sum(s.chunks for s in sc.open.values())
    still_open0 = len(sc.open)
    rss_open = c.rss_bytes(pid)
    await asyncio.sleep(later_s)
    chunks1 = sum(s.chunks for s in sc.open.values())
    rss_later = c.rss_bytes(pid)
    done = await asyncio.gather(*tasks)
    bad = sum(1 for s in done if s.error or s.chunks != MAX_TOKENS)
    extra_chunks = chunks1 - chunks0
    return {
        "rss_base": base,
        "rss_open": rss_open,
        "rss_later": rss_later,
        "open_at_measure": still_open0,
        "all_started_within_s": round(started_s, 2),
        "per_stream_bytes": round((rss_open - base) / max(1, still_open0)),
        "per_chunk_bytes": round((rss_later - rss_open) / extra_chunks) if extra_chunks else None,
        "bad_streams": bad,
    }


async def measure(url: str, stack: c.Stack, pids: dict[str, int], quick: bool) -> dict[str, Any]:
    """Gateway, then relay (one after the other, on the same worker)."""
    nc = await c.connect(url)
    out: dict[str, Any] = {"streams": STREAMS, "token_interval_ms": TOKEN_INTERVAL_MS}
    try:
        sc = StreamClient(nc)
        await sc.start()
        one = b'{"input":"bench","params":{"max_tokens":1}}'
        subjects = {
            "gateway": c.SUBJECTS.infer("generate"),
            "relay": Subjects(public=c.RELAY_ROOT).infer("generate"),
        }
        for subject in subjects.values():
            await c.wait_ready(nc, subject, one, stack)
        for name, subject in subjects.items():
            out[name] = await one_variant(sc, subject, pids[name], STREAMS, 2.0 if quick else 3.0)
    finally:
        await nc.close()
    return out


def report(fig: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the target line; return the target check."""
    print(
        f"{'process':<8} {'RSS before':>11} {'RSS open':>10} {'per stream':>11} "
        f"{'per chunk':>10} {'open':>5} {'bad':>4}"
    )
    for name in ("gateway", "relay"):
        f = fig[name]
        print(
            f"{name:<8} {f['rss_base'] / 2**20:>9.1f}MB {f['rss_open'] / 2**20:>8.1f}MB"
            f" {f['per_stream_bytes'] / 1024:>9.1f}KB {f['per_chunk_bytes'] or 0:>9}B"
            f" {f['open_at_measure']:>5} {f['bad_streams']:>4}"
        )
    return {
        "memory_per_stream": c.target(
            "gateway memory per open stream (KB)",
            fig["gateway"]["per_stream_bytes"] / 1024, "<=", MAX_PER_STREAM / 1024,
        )
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    args = c.parse_args(__doc__, argv)
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    with c.Stack() as stack:
        stack.worker("--token-interval-ms", str(TOKEN_INTERVAL_MS), capacity=STREAMS + 200)
        gw = stack.gateway()
        relay = stack.relay()
        fig: dict[str, Any] = {}

        async def go() -> None:
            pids = {"gateway": gw.pid, "relay": relay.pid}
            fig.update(await measure(stack.url, stack, pids, args.quick))

        run(go())
    fig["targets"] = report(fig)
    c.emit("memory", fig, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
