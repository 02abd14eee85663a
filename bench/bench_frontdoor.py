"""Front-door benchmark: what the OpenAI-compatible HTTP layer adds to a request.

Starts a nats-server, one ``fedgate gateway --http-port`` and one synthetic worker (real
processes), then times, in the same run and interleaved in rounds, sequential requests
for one token: (a) straight over NATS through the gateway (``FedClient.infer``), and (b)
``POST /v1/completions`` / ``/v1/chat/completions`` on the front door (keep-alive
HTTP). Target: front-door p50 at most 1 ms above the NATS p50.

Run: ``python -m bench.bench_frontdoor [N]`` (default 3000 requests per path, ~20 s).
Prints a table, then as its last line one JSON object (milliseconds).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from shared.client import FedClient
from shared.config import NatsConfig
from shared.natsserver import NatsServer
from shared.runtime import run

MODEL = "bench"
ROUNDS = 6


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fedgate(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedgate.cli", "--log-level", "warning", *args],
        stdin=subprocess.DEVNULL,
    )


async def _time(fn: Callable[[], Awaitable[Any]], n: int, out: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)


async def _bench(url: str, base: str, n: int) -> dict[str, Any]:
    client = await FedClient.connect(NatsConfig(url=url))
    http = aiohttp.ClientSession()
    # bodies encoded once, as FedClient's own encoding is cheap (msgspec): time the server
    completion = json.dumps({"model": MODEL, "prompt": "bench", "max_tokens": 1}).encode()
    chat = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "bench"}], "max_tokens": 1}
    ).encode()
    json_type = {"Content-Type": "application/json"}

    async def nats_req() -> None:
        await client.infer("generate", "bench", model=MODEL, params={"max_tokens": 1})

    async def post(path: str, body: bytes) -> None:
        async with http.post(base + path, data=body, headers=json_type) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")

    async def completions() -> None:
        await post("/v1/completions", completion)

    async def chats() -> None:
        await post("/v1/chat/completions", chat)

    paths = {"nats": nats_req, "http_completions": completions, "http_chat": chats}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for fn in paths.values():  # warm-up: connections, caches, JIT-free but lazy imports
            await _time(fn, 200, [])
        per_round = max(1, n // ROUNDS)
        for _ in range(ROUNDS):
            for name, fn in paths.items():
                await _time(fn, per_round, samples[name])
    finally:
        await http.close()
        await client.close()
    figures = {
        name: {
            "p50_ms": round(_pct(s, 0.5), 3),
            "p90_ms": round(_pct(s, 0.9), 3),
            "p99_ms": round(_pct(s, 0.99), 3),
            "n": len(s),
        }
        for name, s in samples.items()
    }
    base_p50 = figures["nats"]["p50_ms"]
    for name in ("http_completions", "http_chat"):
        figures[name]["added_p50_ms"] = round(figures[name]["p50_ms"] - base_p50, 3)
    return figures


def main() -> int:
    """Run the benchmark and print its table and JSON line."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=tmp)
        server.start()
        port = _free_port()
        procs = [
            _fedgate("gateway", "--nats", server.url, "--http-port", str(port)),
            _fedgate(
                "worker", "--nats", server.url, "--node-id", "bench-1", "--model", MODEL,
                "--capacity", "64", "--heartbeat-interval", "0.2",
            ),
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, procs)
            figures: dict[str, Any] = {}

            async def go() -> None:
                figures.update(await _bench(server.url, base, n))

            run(go())
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            server.cleanup()
    print(f"{'path':<18} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'added p50':>10}")
    for name, f in figures.items():
        added = f.get("added_p50_ms")
        print(
            f"{name:<18} {f['p50_ms']:>8.3f} {f['p90_ms']:>8.3f} {f['p99_ms']:>8.3f} "
            f"{'' if added is None else f'{added:+.3f}':>10}"
        )
    worst = max(figures["http_completions"]["added_p50_ms"], figures["http_chat"]["added_p50_ms"])
    figures["target_added_p50_ms"] = 1.0
    figures["within_target"] = worst <= 1.0
    print(json.dumps({"bench": "frontdoor", **figures}))
    return 0


def _wait_ready(base: str, procs: list[subprocess.Popen[bytes]]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a fedgate process exited")
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=1) as resp:
                if MODEL in {m["id"] for m in json.loads(resp.read())["data"]}:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # readiness poll under a deadline
    raise RuntimeError("front door not ready within 30 s")


if __name__ == "__main__":
    sys.exit(main())
