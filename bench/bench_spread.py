"""How each strategy spreads load: a simulation of the real core on a fake clock.

Run: ``python -m bench.bench_spread [--requests N] [--seed S]`` (a few seconds; no NATS).
Closed-loop clients (concurrency 1, 8, 32) send streamed requests; the real catalog,
health checker, breaker and router choose the node; simulated nodes answer with a time
to first token and a time per token that grow with the number of requests they are
serving (a batching LLM server), with ±10 % noise. Outcomes go back into the health
checker exactly as the gateway reports them, canaries answer ``needs_probe()`` every 2 s.

Scenarios: ``twins`` (two identical nodes), ``mixed`` (two fast and two slow nodes),
``newcomer`` (two busy nodes, a third joins after 20 % of the requests). For each
strategy it prints every node's share and the mean / p99 whole-request latency and mean
TTFT; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

from gateway.breaker import CircuitBreaker
from gateway.catalog import ModelCatalog
from gateway.clock import FakeClock
from gateway.health import HealthChecker, HealthConfig
from gateway.router import LoadBalanceStrategy, Router, RouterConfig
from shared.messages import Heartbeat, InferRequest, ModelInfo

STRATEGIES = (
    LoadBalanceStrategy.LEAST_LATENCY,
    LoadBalanceStrategy.ROUND_ROBIN,
    LoadBalanceStrategy.LEAST_CONNECTIONS,
    LoadBalanceStrategy.WEIGHTED_RANDOM,
    LoadBalanceStrategy.POWER_OF_TWO,
)
CONCURRENCY = (1, 8, 32)
TOKENS = 64


@dataclass(slots=True)
class SimNode:
    """A simulated node: base TTFT and time per token, slowed by its batch."""

    node_id: str
    ttft_s: float
    tpot_s: float
    capacity: int = 64
    slowdown: float = 0.08
    """Extra time per request already in the batch (fraction of the base)."""
    joins_at: float = 0.0
    """Fraction of the run after which the node joins."""
    busy: int = 0
    served: int = 0
    peak: int = 0
    """Most requests in flight at once."""

    def times(self, rng: random.Random) -> tuple[float, float]:
        """(ttft, whole time) of a request started now."""
        factor = 1.0 + self.slowdown * self.busy
        ttft = self.ttft_s * factor * rng.uniform(0.9, 1.1)
        return ttft, ttft + TOKENS * self.tpot_s * factor * rng.uniform(0.9, 1.1)


SCENARIOS: dict[str, list[SimNode]] = {
    "twins": [SimNode("a", 0.2, 0.02), SimNode("b", 0.2, 0.02)],
    "mixed": [
        SimNode("fast1", 0.1, 0.015),
        SimNode("fast2", 0.1, 0.015),
        SimNode("slow1", 0.3, 0.04),
        SimNode("slow2", 0.3, 0.04),
    ],
    "newcomer": [
        SimNode("a", 0.2, 0.02),
        SimNode("b", 0.2, 0.02),
        SimNode("new", 0.2, 0.02, joins_at=0.2),
    ],
}


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    data: Any = field(compare=False, default=None)


def simulate(
    scenario: str, strategy: LoadBalanceStrategy, concurrency: int, requests: int, seed: int
) -> dict[str, Any]:
    """One run: shares and latencies."""
    rng = random.Random(seed)
    nodes = {n.node_id: SimNode(n.node_id, n.ttft_s, n.tpot_s, n.capacity, n.slowdown, n.joins_at)
             for n in SCENARIOS[scenario]}  # fmt: skip
    clock = FakeClock(0.0)
    catalog = ModelCatalog(clock=clock)
    health = HealthChecker(HealthConfig(publish_interval_s=0.05), clock=clock)
    breaker = CircuitBreaker(clock=clock)
    router = Router(
        catalog, health, breaker, RouterConfig(strategy=strategy, seed=seed), clock=clock
    )

    def join(node: SimNode) -> None:
        beat = Heartbeat(
            incarnation="i1",
            models=(ModelInfo(model="m", capabilities=("generate",)),),
            capacity=node.capacity,
        )
        catalog.apply_heartbeat(node.node_id, beat)
        health.register_node(node.node_id)

    for node in nodes.values():
        if node.joins_at == 0.0:
            join(node)
    events: list[_Event] = []
    seq = 0

    def schedule(at: float, kind: str, data: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, _Event(at, seq, kind, data))

    for client in range(concurrency):
        schedule(0.0, "send", client)
    schedule(0.05, "flush")
    schedule(2.0, "probe")
    sent = 0
    latencies: list[float] = []
    ttfts: list[float] = []
    while events and len(latencies) < requests:
        ev = heapq.heappop(events)
        clock.set(ev.at)
        if ev.kind == "flush":
            health.flush()
            schedule(ev.at + 0.05, "flush")
        elif ev.kind == "probe":
            for nid in health.needs_probe():
                ttft, _ = nodes[nid].times(rng)
                health.report_probe_success(nid, latency_s=ttft)
            schedule(ev.at + 2.0, "probe")
        elif ev.kind == "send":
            sent += 1
            for node in nodes.values():
                if node.joins_at and catalog.node(node.node_id) is None:
                    if sent >= node.joins_at * requests:
                        join(node)
            c = router.route(InferRequest(capability="generate", request_id=f"r{sent}"))
            node = nodes[c.node_id]
            ttft, whole = node.times(rng)
            node.busy += 1
            node.served += 1
            node.peak = max(node.peak, node.busy)
            catalog.add_in_flight(node.node_id, 1)
            schedule(ev.at + whole, "done", (ev.data, node, ttft, whole))
        else:
            client, node, ttft, whole = ev.data
            node.busy -= 1
            catalog.add_in_flight(node.node_id, -1)
            health.report_success(node.node_id, whole, TOKENS, ttft_s=ttft)
            breaker.record_success(node.node_id)
            latencies.append(whole)
            ttfts.append(ttft)
            schedule(ev.at, "send", client)
    latencies.sort()
    total = sum(n.served for n in nodes.values())
    return {
        "share": {n.node_id: round(n.served / total, 3) for n in nodes.values()},
        "mean_s": round(sum(latencies) / len(latencies), 3),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
        "ttft_mean_ms": round(1000 * sum(ttfts) / len(ttfts), 1),
        "peak": {n.node_id: n.peak for n in nodes.values()},
    }


def main() -> None:
    """Every scenario x strategy x concurrency; a table, then one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    results: dict[str, Any] = {}
    for scenario in SCENARIOS:
        print(f"\n{scenario}: share per node / mean s / p99 s / mean TTFT ms / peak in flight")
        for strategy in STRATEGIES:
            for conc in CONCURRENCY:
                r = simulate(scenario, strategy, conc, args.requests, args.seed)
                results[f"{scenario}/{strategy.value}/c{conc}"] = r
                shares = " ".join(f"{k}={v:.2f}" for k, v in r["share"].items())
                print(
                    f"  {strategy.value:<18} c{conc:<3} {shares:<40} {r['mean_s']:>6.3f}"
                    f" {r['p99_s']:>6.3f} {r['ttft_mean_ms']:>7.1f}  {max(r['peak'].values())}"
                )
    print(json.dumps({"bench": "spread", **results}))


if __name__ == "__main__":
    main()
