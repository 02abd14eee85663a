"""Routing benchmark: route() under live health reports, for several latency distributions.

Run: ``python -m bench.bench_routing [--calls N] [--repeat R] [--before REV]`` (about 40 s
per repeat; a shared machine is noisy: ``--repeat 3`` shows the median of three). Fleets of
10,000 nodes, 2,500 per capability, one health report between two routes, with the
nodes' time to first token distributed as:

* ``equal``   - every node reports the same latency (a homogeneous or fresh fleet: ties);
* ``spread``  - each node its own, uniform in 5-55 ms;
* ``regions`` - spread, over 50 regions, every request naming one;
* ``mix``     - 100 models, 1-3 per node over 7 capabilities, 8 regions, half the
  requests with a region, a fifth with a high cost tolerance (the older benchmark).

The garbage collector stays on while routes are timed, as in the gateway (which does not
tune it); a route and a report free what they allocate (no net growth of the objects it
tracks), so it does not run: a figure that saw collections says how many.
Each is measured for the default strategy and for ``least_latency``; with ``--before REV``
the router of git revision REV (with that revision's routing core, ``CORE``) runs on an
identical fleet, call for call interleaved with the current one (same reports, same
requests) for the first ``--before-calls`` routes, so both figures come from the same run
(a router that scans ties is slow: keep that number small); the plain figures are then
the current router's over the remaining calls, alone.
Also: the default strategy on 100- and 1,000-node fleets (``mix``), get_candidates() and
apply_heartbeat. Prints a table, then as its last line one JSON object (microseconds);
``route_10000`` is the worst p99 over the distributions (the figure `make bench` checks).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.health import HealthChecker
from gateway.router import LoadBalanceStrategy, Router, RouterConfig
from shared.messages import Heartbeat, InferRequest, ModelInfo, QoS, encode, heartbeat_decoder

CAPS = ["generate", "code", "embed", "transcribe", "synthesize", "image_gen", "sentiment"]
REGIONS = ["us-west", "us-east", "eu-west", "eu-central", "ap-south", "ap-east", "sa", "af"]
MANY_REGIONS = [f"r{i}" for i in range(50)]
DISTRIBUTIONS = ("equal", "spread", "regions", "mix")
N_MODELS = 100

RouterFactory = Callable[[ModelCatalog, HealthChecker, CircuitBreaker, RouterConfig], Any]


def _collections() -> int:
    """Cyclic garbage collections so far, every generation."""
    return sum(s["collections"] for s in gc.get_stats())


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Fleet:
    """A catalog, health checker and router over n nodes with a latency distribution."""

    def __init__(
        self, dist: str, n: int, strategy: LoadBalanceStrategy, make: RouterFactory = Router
    ) -> None:
        rng = random.Random(1)
        self.dist = dist
        self.catalog, self.health = ModelCatalog(), HealthChecker()
        self.router = make(
            self.catalog, self.health, CircuitBreaker(), RouterConfig(strategy=strategy)
        )
        self.ids = [f"node-{i}" for i in range(n)]
        self.base_ms: list[float] = []
        self.beats: list[Heartbeat] = []
        models = [(f"model-{m}", tuple(rng.sample(CAPS, rng.randint(1, 2)))) for m in range(100)]
        regions = MANY_REGIONS if dist == "regions" else REGIONS
        for i, nid in enumerate(self.ids):
            if dist == "mix":
                picked = rng.sample(models, rng.randint(1, 3))
                if i < 100:
                    picked = [*picked, ("probe-model", ("probe100",))]
            else:
                picked = [(f"model-{i % 4}", (CAPS[i % 4],))]
            beat = Heartbeat(
                node_id=nid,
                incarnation=f"inc-{i}",
                region=rng.choice(regions),
                models=tuple(ModelInfo(model=m, capabilities=c) for m, c in picked),
                capacity=rng.randint(4, 64),
                in_flight=rng.randint(0, 4),
                cost=0.5 if dist == "equal" else round(rng.random(), 2),
                gpu=rng.random() < 0.5,
                started_ms=1,
            )
            self.beats.append(beat)
            self.catalog.apply_heartbeat(nid, beat)
            self.health.register_node(nid)
            self.base_ms.append(50.0 if dist == "equal" else rng.uniform(5.0, 55.0))
        self.rng = random.Random(2)
        for i in range(n):
            for _ in range(8):  # past RouterConfig.explore_samples (4): a measured fleet
                self.report(i)
        self.requests = self._requests(random.Random(3), 200)

    def report(self, i: int) -> None:
        """One streamed success on node i, its TTFT drawn from the distribution."""
        ms = self.base_ms[i]
        if self.dist != "equal":
            ms *= self.rng.uniform(0.95, 1.05)
        self.health.report_success(self.ids[i], ms / 1000 + 0.5, 50, ttft_s=ms / 1000)

    def _requests(self, rng: random.Random, count: int) -> list[InferRequest]:
        out = []
        for i in range(count):
            if self.dist == "mix":
                region = rng.choice(REGIONS) if rng.random() < 0.5 else None
                tol = 80 if rng.random() < 0.2 else 50
                cap = rng.choice(CAPS)
            else:
                region = rng.choice(MANY_REGIONS) if self.dist == "regions" else None
                tol, cap = 50, CAPS[0]
            qos = QoS(region=region, cost_tolerance=tol)
            out.append(InferRequest(capability=cap, request_id=f"r{i}", qos=qos))
        return out


CORE = ("policies", "scorer", "ordering", "strategies", "index", "explain", "spread", "router")
"""The routing core's modules, dependencies first: ``before_router`` loads them all."""


def before_router(rev: str) -> RouterFactory:
    """The Router class of git revision ``rev``, with that revision's routing core (the
    modules of ``CORE`` it has; catalog, health and breaker are the current ones)."""
    names = [f"gateway.{m}" for m in CORE]
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for name in names:
            path = name.replace(".", "/") + ".py"
            got = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
            if got.returncode:
                continue  # not in that revision (the old router does not import it)
            mod = types.ModuleType(name)
            sys.modules[name] = mod  # the old modules import each other by these names
            exec(compile(got.stdout, f"{rev}:{path}", "exec"), mod.__dict__)
        old = sys.modules["gateway.router"]
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod

    def make(catalog: Any, health: Any, breaker: Any, config: RouterConfig) -> Any:
        strategy = old.LoadBalanceStrategy[config.strategy.name]
        cfg = old.RouterConfig(strategy=strategy, seed=config.seed)
        return old.Router(catalog, health, breaker, cfg)

    return make


def bench_route(
    dist: str,
    n: int,
    strategy: LoadBalanceStrategy,
    calls: int,
    before: RouterFactory | None,
    before_calls: int = 2000,
) -> dict[str, float]:
    """route() p50/p99 with a health report before each call; the old router's, call for
    call interleaved, over the first ``before_calls`` calls."""
    fleets = [Fleet(dist, n, strategy)]
    if before is not None:
        fleets.append(Fleet(dist, n, strategy, before))
    for fleet in fleets:
        for r in fleet.requests:  # warm-up: build the orderings
            fleet.router.route(r)
    samples: list[list[float]] = [[] for _ in fleets]
    pick = random.Random(4)
    collected = _collections()
    for i in range(calls):  # the collector on, as in the gateway (which does not tune it)
        node = pick.randrange(n)
        for fleet, out in zip(fleets, samples, strict=True):
            if fleet is not fleets[0] and i >= before_calls:
                break
            fleet.report(node)
            route, r = fleet.router.route, fleet.requests[i % len(fleet.requests)]
            t0 = time.perf_counter_ns()
            route(r)
            out.append((time.perf_counter_ns() - t0) / 1000)
    alone = samples[0][len(samples[1]) :] if before is not None else samples[0]
    alone = alone or samples[0]  # the calls after the interleaved ones (caches unshared)
    res = {"p50_us": _pct(alone, 0.5), "p99_us": _pct(alone, 0.99)}
    res["gc_collections"] = _collections() - collected
    if before is not None:  # both routers over the same interleaved calls
        paired = samples[0][: len(samples[1])]
        res |= {
            "before_p50_us": _pct(samples[1], 0.5),
            "before_p99_us": _pct(samples[1], 0.99),
            "interleaved_p50_us": _pct(paired, 0.5),
            "interleaved_p99_us": _pct(paired, 0.99),
        }
    return res


def bench_candidates_and_heartbeats(n: int) -> dict[str, float]:
    """get_candidates() on a 100-node capability, and apply_heartbeat on the n-node fleet."""
    fleet = Fleet("mix", n, RouterConfig().strategy)
    probe = InferRequest(capability="probe100", request_id="p")
    fleet.router.route(probe)
    cand: list[float] = []
    for _ in range(300):
        t0 = time.perf_counter_ns()
        got = fleet.router.get_candidates(probe)
        cand.append((time.perf_counter_ns() - t0) / 1000)
    assert len(got) == 100
    rng = random.Random(3)
    for r in fleet.requests:
        fleet.router.route(r)
    wire = []
    for _ in range(20_000):
        beat = fleet.beats[rng.randrange(n)]
        wire.append((beat.node_id, encode(beat).replace(b'"in_flight":', b'"in_flight":1', 1)))
    decoded = [(nid, heartbeat_decoder.decode(raw)) for nid, raw in wire]
    hb_samples: list[float] = []
    gc.disable()
    try:
        for nid, beat in decoded:
            t0 = time.perf_counter_ns()
            fleet.catalog.apply_heartbeat(nid or "", beat)
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
    p = argparse.ArgumentParser(description="route() cost under live health reports")
    p.add_argument("--calls", type=int, default=20_000, help="routes per figure")
    p.add_argument("--before", metavar="REV", help="also run the router of this git revision")
    p.add_argument(
        "--before-calls", type=int, default=2000, help="routes of the old router per figure"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per figure; the median of each is shown"
    )
    args = p.parse_args()
    before = before_router(args.before) if args.before else None
    default = RouterConfig().strategy
    results: dict[str, Any] = {"default_strategy": default.value}
    head = f"{'fleet':>6} {'distribution':<8} {'strategy':<14} | {'p50 µs':>7} {'p99 µs':>8}"
    if before:
        head += f" | interleaved: {'p50':>7} {'p99':>8} | before {'p50':>8} {'p99':>8}"
    print(head)
    worst = 0.0
    cases: list[tuple[int, str, LoadBalanceStrategy, RouterFactory | None]] = [
        (100, "mix", default, None),
        (1_000, "mix", default, None),
    ]
    for dist in DISTRIBUTIONS:
        for strategy in (default, LoadBalanceStrategy.LEAST_LATENCY):
            cases.append((10_000, dist, strategy, before))
    for n, dist, strategy, old in cases:
        runs = [
            bench_route(dist, n, strategy, args.calls, old, args.before_calls)
            for _ in range(args.repeat)
        ]
        r = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results[f"route_{n}_{dist}_{strategy.value}"] = r
        if n == 10_000 and strategy is default:
            worst = max(worst, r["p99_us"])
        if n < 10_000:
            results[f"route_{n}"] = r
        line = f"{n:>6} {dist:<8} {strategy.value:<14} | {r['p50_us']:>7.1f} {r['p99_us']:>8.1f}"
        if r["gc_collections"]:
            line += f" (gc: {r['gc_collections']:g} collections)"
        if "before_p50_us" in r:
            line += f" | {'':>12} {r['interleaved_p50_us']:>7.1f} {r['interleaved_p99_us']:>8.1f}"
            line += f" | {'':>6} {r['before_p50_us']:>8.1f} {r['before_p99_us']:>8.1f}"
        print(line, flush=True)
    results["route_10000"] = {"p99_us": worst}
    print(f"route() p99 at 10,000 nodes, worst distribution, {default.value}: {worst:.1f} µs")
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
