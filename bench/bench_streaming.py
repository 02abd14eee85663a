"""Streaming: 100-token streams direct vs through the gateway vs through the bare relay.

Starts a nats-server, one synthetic worker (no delays), one gateway and the bare relay
(every chunk re-published by each hop). The client (this process, raw nats-py on uvloop,
one wildcard inbox subscription) opens streams (``stream: true``,
``params.max_tokens=100``) at concurrency 1 and 16, round-robin over the variants, and
measures tokens/s (chunks received / wall time) and time to first token. Figures are
medians of the rounds.

Target: gateway tokens/s at concurrency 16 ≥ 0.9 × the relay's.
Run: ``python -m bench.bench_streaming [--quick]`` (~30 s; quick ~12 s).
Prints a table, then as its last line one JSON object (tokens/s, microseconds).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import common as c
from shared import headers as h
from shared.runtime import run
from shared.subjects import Subjects

TOKENS = 100
REQUEST = b'{"input":"bench","stream":true,"params":{"max_tokens":%d}}' % TOKENS
MIN_TPS_RATIO = 0.9
CONCURRENCY = (1, 16)


class _Stream:
    __slots__ = ("chunks", "done", "error", "first", "t0")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.t0 = time.perf_counter()
        self.first = 0.0
        self.chunks = 0
        self.error = ""
        self.done = done


class StreamClient:
    """Opens streams with reply subjects under one wildcard subscription."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox() + "."
        self.cut = len(self.inbox)
        self.open: dict[str, _Stream] = {}
        self.keys = itertools.count()

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox + "*", cb=self._on_msg, pending_msgs_limit=-1)
        await self.nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[self.cut :]
        s = self.open.get(key)
        if s is None:
            return
        if msg.data:
            if not s.chunks:
                s.first = time.perf_counter()
            s.chunks += 1
            return
        del self.open[key]  # terminal message (or an error)
        if msg.headers and (h.FED_ERROR in msg.headers or h.NATS_STATUS in msg.headers):
            s.error = msg.headers.get(h.FED_ERROR) or msg.headers.get(h.NATS_STATUS, "?")
        s.done.set_result(None)

    async def stream(self, subject: str, body: bytes, timeout_s: float = 60) -> _Stream:
        """Open one stream and wait for its terminal message."""
        key = f"{next(self.keys):x}"
        s = self.open[key] = _Stream(asyncio.get_running_loop().create_future())
        await self.nc.publish(subject, body, reply=self.inbox + key)
        try:
            await asyncio.wait_for(s.done, timeout_s)
        except TimeoutError:
            self.open.pop(key, None)
            s.error = "client timeout"
        return s


def variants() -> dict[str, tuple[str, Callable[[], bytes]]]:
    """direct (a dispatch to the worker's inbox), gateway, relay."""
    ids = itertools.count()
    return {
        "direct": (
            c.SUBJECTS.node_infer(c.NODE_ID),
            lambda: c.dispatch_body(REQUEST, f"s{next(ids)}"),
        ),
        "gateway": (c.SUBJECTS.infer("generate"), lambda: REQUEST),
        "relay": (Subjects(public=c.RELAY_ROOT).infer("generate"), lambda: REQUEST),
    }


async def load(
    sc: StreamClient, subject: str, body: Callable[[], bytes], concurrency: int, per_lane: int
) -> dict[str, Any]:
    """``concurrency`` lanes, each opening ``per_lane`` streams one after another."""
    done: list[_Stream] = []

    async def lane() -> None:
        for _ in range(per_lane):
            done.append(await sc.stream(subject, body()))

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    tokens = sum(s.chunks for s in done)
    bad = sum(1 for s in done if s.error or s.chunks != TOKENS)
    ttft = [(s.first - s.t0) * 1e6 for s in done if s.chunks]
    return {"tps": tokens / elapsed, "ttft_p50_us": c.pct(ttft, 0.5) if ttft else 0, "bad": bad}


async def measure(url: str, stack: c.Stack, quick: bool) -> dict[str, Any]:
    """Warm up, then alternate the variants per concurrency for several rounds."""
    n_rounds, per_lane_1, per_lane_16 = (3, 10, 3) if quick else (5, 30, 8)
    nc = await c.connect(url)
    out: dict[str, Any] = {"rounds": n_rounds, "tokens_per_stream": TOKENS}
    try:
        sc = StreamClient(nc)
        await sc.start()
        vs = variants()
        one = b'{"input":"bench","params":{"max_tokens":1}}'
        await c.wait_ready(nc, vs["gateway"][0], one, stack)
        await c.wait_ready(nc, vs["relay"][0], one, stack)
        for subject, body in vs.values():  # warm-up
            await load(sc, subject, body, 16, 2)

        def run_of(
            subject: str, body: Callable[[], bytes], conc: int, per_lane: int
        ) -> Callable[[], Awaitable[Any]]:
            return lambda: load(sc, subject, body, conc, per_lane)

        for conc in CONCURRENCY:
            per_lane = per_lane_1 if conc == 1 else per_lane_16
            res = await c.rounds(
                {k: run_of(s, b, conc, per_lane) for k, (s, b) in vs.items()}, n_rounds
            )
            block: dict[str, Any] = {"streams_per_round": conc * per_lane}
            for k, rs in res.items():
                block[k] = {
                    "tokens_per_s": round(c.median([r["tps"] for r in rs])),
                    "tokens_per_s_rounds": [round(r["tps"]) for r in rs],
                    "ttft_p50_us": round(c.median([r["ttft_p50_us"] for r in rs]), 1),
                    "bad_streams": sum(r["bad"] for r in rs),
                }
            ratio = [res["gateway"][i]["tps"] / res["relay"][i]["tps"] for i in range(n_rounds)]
            block["gateway_vs_relay_tps"] = round(c.median(ratio), 3)
            block["gateway_vs_relay_tps_rounds"] = [round(x, 3) for x in ratio]
            out[f"c{conc}"] = block
    finally:
        await nc.close()
    return out


def report(fig: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the target line; return the target check."""
    print(f"{'conc':>4} {'variant':<8} {'tokens/s':>9} {'TTFT p50 µs':>12} {'bad':>4}")
    for conc in CONCURRENCY:
        block = fig[f"c{conc}"]
        for name in ("direct", "gateway", "relay"):
            v = block[name]
            print(
                f"{conc:>4} {name:<8} {v['tokens_per_s']:>9} {v['ttft_p50_us']:>12.1f}"
                f" {v['bad_streams']:>4}"
            )
        print(
            f"     gateway/relay tokens/s = {block['gateway_vs_relay_tps']} "
            f"(rounds {block['gateway_vs_relay_tps_rounds']})"
        )
    return {
        "streaming_c16_tps_ratio": c.target(
            "gateway tokens/s@16 / relay tokens/s@16",
            fig["c16"]["gateway_vs_relay_tps"], ">=", MIN_TPS_RATIO,
        )
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    args = c.parse_args(__doc__, argv)
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    with c.Stack() as stack:
        stack.worker()
        stack.gateway()
        stack.relay()
        fig: dict[str, Any] = {}

        async def go() -> None:
            fig.update(await measure(stack.url, stack, args.quick))

        run(go())
    fig["targets"] = report(fig)
    c.emit("streaming", fig, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
