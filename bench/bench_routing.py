"""Routing benchmark: route() under live health reports, get_candidates(), heartbeats.

Run: ``python -m bench.bench_routing`` (about 20 s). Prints a table, then as its last
line one JSON object with every figure (microseconds).
"""

from __future__ import annotations

import gc
import json
import random
import time
from typing import Any

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.health import HealthChecker
from gateway.router import Router
from shared.messages import Heartbeat, InferRequest, ModelInfo, QoS, encode, heartbeat_decoder

CAPS = ["generate", "code", "embed", "transcribe", "synthesize", "image_gen", "sentiment"]
REGIONS = ["us-west", "us-east", "eu-west", "eu-central", "ap-south", "ap-east", "sa", "af"]
N_MODELS = 100


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _heartbeat(rng: random.Random, i: int, models: list[tuple[str, tuple[str, ...]]]) -> Heartbeat:
    picked = rng.sample(models, rng.randint(1, 3))
    if i < 100:
        picked = [*picked, ("probe-model", ("probe100",))]
    return Heartbeat(
        node_id=f"node-{i}",
        incarnation=f"inc-{i}",
        region=rng.choice(REGIONS),
        models=tuple(ModelInfo(model=m, capabilities=c) for m, c in picked),
        capacity=rng.randint(4, 64),
        in_flight=rng.randint(0, 4),
        cost=round(rng.random(), 2),
        gpu=rng.random() < 0.5,
        started_ms=1,
    )


def build_fleet(n: int, seed: int = 1) -> tuple[ModelCatalog, HealthChecker, Router, list[Any]]:
    """A fleet of n nodes over 100 models with mixed capabilities and regions."""
    rng = random.Random(seed)
    models = [(f"model-{m}", tuple(rng.sample(CAPS, rng.randint(1, 2)))) for m in range(N_MODELS)]
    catalog, health, breaker = ModelCatalog(), HealthChecker(), CircuitBreaker()
    router = Router(catalog, health, breaker)
    beats = []
    for i in range(n):
        beat = _heartbeat(rng, i, models)
        beats.append(beat)
        catalog.apply_heartbeat(beat.node_id or "", beat)
        health.register_node(beat.node_id or "")
        for _ in range(3):
            health.report_success(beat.node_id or "", rng.uniform(0.01, 0.3), tokens=50)
    return catalog, health, router, beats


def _requests(rng: random.Random, count: int) -> list[InferRequest]:
    out = []
    for i in range(count):
        region = rng.choice(REGIONS) if rng.random() < 0.5 else None
        tol = 80 if rng.random() < 0.2 else 50
        out.append(
            InferRequest(
                capability=rng.choice(CAPS),
                request_id=f"r{i}",
                qos=QoS(region=region, cost_tolerance=tol),
            )
        )
    return out


def bench_route(n: int, calls: int) -> dict[str, float]:
    """route() latency with one health report between calls."""
    _, health, router, _ = build_fleet(n)
    rng = random.Random(2)
    reqs = _requests(rng, 200)
    ids = [f"node-{i}" for i in range(n)]
    for r in reqs:  # warm-up: build the orderings
        router.route(r)
    samples: list[float] = []
    gc.disable()
    try:
        for i in range(calls):
            health.report_success(rng.choice(ids), rng.uniform(0.01, 0.3), tokens=50)
            r = reqs[i % len(reqs)]
            t0 = time.perf_counter_ns()
            router.route(r)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return {"p50_us": _pct(samples, 0.5), "p99_us": _pct(samples, 0.99)}


def bench_candidates_and_heartbeats(n: int) -> dict[str, float]:
    """get_candidates() on a 100-node capability, and apply_heartbeat on the n-node fleet."""
    catalog, _, router, beats = build_fleet(n)
    probe = InferRequest(capability="probe100", request_id="p")
    router.route(probe)
    cand: list[float] = []
    for _ in range(300):
        t0 = time.perf_counter_ns()
        got = router.get_candidates(probe)
        cand.append((time.perf_counter_ns() - t0) / 1000)
    assert len(got) == 100
    rng = random.Random(3)
    for r in _requests(rng, 200):
        router.route(r)
    wire = []
    for _ in range(20_000):
        beat = beats[rng.randrange(n)]
        wire.append((beat.node_id, encode(beat).replace(b'"in_flight":', b'"in_flight":1', 1)))
    decoded = [(nid, heartbeat_decoder.decode(raw)) for nid, raw in wire]
    hb_samples: list[float] = []
    gc.disable()
    try:
        for nid, beat in decoded:
            t0 = time.perf_counter_ns()
            catalog.apply_heartbeat(nid or "", beat)
            hb_samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return {
        "get_candidates_100_p50_us": _pct(cand, 0.5),
        "get_candidates_100_p99_us": _pct(cand, 0.99),
        "heartbeat_mean_us": sum(hb_samples) / len(hb_samples),
        "heartbeat_p99_us": _pct(hb_samples, 0.99),
    }


def main() -> None:
    """Run every benchmark, print a table and a final JSON line."""
    results: dict[str, Any] = {}
    print(f"{'fleet':>7} | {'route p50 µs':>12} | {'route p99 µs':>12}")
    for n, calls in ((100, 20_000), (1_000, 20_000), (10_000, 20_000)):
        r = bench_route(n, calls)
        results[f"route_{n}"] = r
        print(f"{n:>7} | {r['p50_us']:>12.1f} | {r['p99_us']:>12.1f}")
    extra = bench_candidates_and_heartbeats(10_000)
    results.update(extra)
    print(
        f"get_candidates (100-node capability): p50 {extra['get_candidates_100_p50_us']:.1f} µs,"
        f" p99 {extra['get_candidates_100_p99_us']:.1f} µs"
    )
    print(
        f"apply_heartbeat (10,000 nodes): mean {extra['heartbeat_mean_us']:.1f} µs,"
        f" p99 {extra['heartbeat_p99_us']:.1f} µs"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
