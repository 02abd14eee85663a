"""The main comparison: every router under the same load, interleaved over rounds.

Each round runs every router once (the starting router rotates), waiting between runs
until the processes are idle again. One run = one load (aiperf, or the in-repo client
for the smoke test) through the router, with its processes' CPU and RSS sampled
(``meter.Meter``) and each upstream's request counter read before and after. Every
router is warmed up first (two requests per stream, not measured): first-call costs
(LiteLLM's lazy imports, fedgate's health figures) are not charged to round 1.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import client, loadgen
from bench.peers.fleet import Fleet
from bench.peers.meter import Meter, settle
from bench.peers.procs import Procs
from bench.peers.routers import API_KEY, MODEL, Router


@dataclass(frozen=True, slots=True)
class Plan:
    """How the comparison runs."""

    load: loadgen.Load
    rounds: int = 3
    loadgen: str = "aiperf"
    """``aiperf``, or ``client`` (the in-repo Python client: no aiperf venv needed)."""
    out_dir: Path = Path("/tmp/fedgate-peers")


def conversations(n: int, words: int, osl: int) -> list[client.Conversation]:
    """``n`` single-turn chats of ``words`` prompt words asking for ``osl`` words."""
    prompt = " ".join(["word"] * words)
    return [
        client.Conversation((f"{i} {prompt}",), max_tokens=osl, min_words=osl) for i in range(n)
    ]


def warm_up(router: Router, concurrency: int, osl: int) -> None:
    """Two requests per stream through ``router`` (not measured)."""
    convs = conversations(2 * concurrency, 8, min(osl, 16))
    asyncio.run(client.closed_loop(router.urls, API_KEY, MODEL, convs, concurrency))


def run_once(router: Router, owner: Procs, fleet: Fleet, plan: Plan, tag: str) -> dict[str, Any]:
    """One measured run of ``plan.load`` through ``router``."""
    groups = router.groups(owner)
    settle(groups)
    load = plan.load
    before = fleet.requests()
    loadavg = os.getloadavg()
    with Meter(groups) as meter:
        if plan.loadgen == "aiperf":
            figures = loadgen.run(router.urls, load, API_KEY, MODEL, plan.out_dir / tag)
            start, end = figures.pop("window")
        else:
            convs = conversations(load.requests, load.isl, load.osl)
            outcomes, wall = asyncio.run(
                client.closed_loop(router.urls, API_KEY, MODEL, convs, load.concurrency)
            )
            figures = client.summarize(outcomes, wall)
            figures.pop("failures", None)
            start = end = None
    after = fleet.requests()
    served = [a - b for a, b in zip(after, before, strict=True)]
    cpu = meter.cpu_between(start, end)
    ok = max(1, int(figures.get("ok") or 0))
    figures["cpu_ms_per_req"] = round(sum(cpu.values()) * 1000 / ok, 3) if cpu else None
    figures["cpu_ms_per_req_by_part"] = {p: round(s * 1000 / ok, 3) for p, s in cpu.items()}
    rss = meter.peak_rss()
    figures["rss_mb"] = round(sum(rss.values()) / 2**20, 1) if rss else None
    figures["rss_mb_by_part"] = {p: round(b / 2**20, 1) for p, b in rss.items()}
    figures["upstream_requests"] = served
    figures["loadavg"] = [round(x, 2) for x in loadavg]
    return figures


def compare(routers: list[Router], owner: Procs, fleet: Fleet, plan: Plan) -> dict[str, Any]:
    """Every router, once per round, rotating the start; per-router lists of runs."""
    for router in routers:
        warm_up(router, plan.load.concurrency, plan.load.osl)
    runs: dict[str, list[dict[str, Any]]] = {r.name: [] for r in routers}
    for rnd in range(plan.rounds):
        order = routers[rnd % len(routers) :] + routers[: rnd % len(routers)]
        for router in order:
            owner.check_alive(owner.procs)
            tag = f"round{rnd}-{router.name.replace(':', '-')}"
            figures = run_once(router, owner, fleet, plan, tag)
            figures["round"] = rnd
            runs[router.name].append(figures)
            print(
                f"  round {rnd} {router.name:<32} ok {figures['ok']:>5} err {figures['errors']:>3}"
                f"  ttft p50 {figures['ttft_p50_ms']} ms  {figures['rps']} req/s"
                f"  cpu {figures['cpu_ms_per_req']} ms/req  load {figures['loadavg'][0]}",
                flush=True,
            )
    return runs
