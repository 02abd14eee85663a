"""``python -m bench.peers``: fedgate side by side with sglang-router and LiteLLM.

Starts N fake OpenAI upstreams (``bench/peers/upstream.py``), then every router under
test over the same upstreams as real processes (``routers.py``): ``direct`` (the load
generator calls the upstreams round-robin), fedgate (nats-server, a gateway with its HTTP
front door, one ``--backend openai`` worker per upstream), sglang-router (three policies)
and the LiteLLM proxy (three routing strategies), the peers from the venvs that
``make peers-setup`` builds. Then:

1. the comparison (``compare.py``): aiperf streams chat completions at ``--concurrency``
   through each router, interleaved over ``--rounds``; per router TTFT, ITL and latency
   p50/p99, requests/s, errors, CPU ms per request of its processes, RSS, each upstream's
   share of the requests, the load average;
2. the fault rounds (``faults.py``): an upstream killed mid-run, one answering 500s, one
   cutting its streams; client-visible errors and truncated replies per router.

Prints the tables (Markdown) with the targets marked met/MISSED, and as its last line one
JSON object with every figure. Everything it started is stopped on the way out.

Usage: ``python -m bench.peers [--quick] [--routers all|direct,fedgate,sglang:round_robin,...]
[--rounds N] [--concurrency C] [--requests R] [--upstreams N] [--no-faults]
[--loadgen aiperf|client]``. Default: every router whose venv exists, 3 rounds of 320
requests at 32 streams, 64-word prompts and answers, TTFT 20 ms, 10 ms between words,
160 requests per fault scenario (~35 min on 2 busy vCPUs: LiteLLM runs near 5 req/s
there). ``--quick``: 2 rounds of 128 requests, 64 per fault scenario.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import faults, fleet, loadgen, report, routers
from bench.peers.compare import Plan, compare
from bench.peers.meter import settle
from bench.peers.procs import Procs
from bench.peers.upstream import Pace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers", description="fedgate vs sglang-router vs LiteLLM"
    )
    p.add_argument("--quick", action="store_true", help="a small run (2 rounds, fewer requests)")
    p.add_argument(
        "--routers",
        default="all",
        help=f"comma-separated, or 'all' (= {','.join(routers.ALL)}); peers without a venv "
        "are skipped with a warning",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--concurrency", type=int, default=32, help="streams in flight (default 32)")
    p.add_argument("--requests", type=int, default=None, help="per run (default 320)")
    p.add_argument("--fault-requests", type=int, default=None, help="per scenario (default 160)")
    p.add_argument("--upstreams", type=int, default=3)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--isl", type=int, default=64, help="prompt words")
    p.add_argument("--osl", type=int, default=64, help="answer words")
    p.add_argument("--capacity", type=int, default=64, help="each fedgate worker's --capacity")
    p.add_argument("--no-faults", action="store_true", help="skip the fault rounds")
    p.add_argument("--faults-only", action="store_true", help="only the fault rounds")
    p.add_argument("--loadgen", choices=("aiperf", "client"), default="aiperf")
    p.add_argument("--out", type=Path, default=None, help="logs and aiperf artifacts")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.requests = args.requests or (128 if args.quick else 320)
    args.fault_requests = args.fault_requests or (64 if args.quick else 160)
    return args


def choose(spec: str, loadgen_name: str) -> list[str]:
    """The router variants to run, less the peers whose venv is missing."""
    wanted = list(routers.ALL) if spec == "all" else [s.strip() for s in spec.split(",") if s]
    chosen = []
    for name in wanted:
        kind = name.partition(":")[0]
        if kind in ("sglang", "litellm") and not routers.have_peer(kind):
            print(f"skipping {name}: no venv at {routers.PEERS_DIR / kind} (make peers-setup)")
            continue
        chosen.append(name)
    if loadgen_name == "aiperf" and not loadgen.aiperf_binary().exists():
        sys.exit(f"no aiperf at {loadgen.aiperf_binary()}: make peers-setup, or --loadgen client")
    return chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = choose(args.routers, args.loadgen)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="fedgate-peers-"))
    pace = Pace(args.ttft_ms, args.itl_ms, args.osl)
    load = loadgen.Load(args.concurrency, args.requests, args.isl, args.osl)
    plan = Plan(load, args.rounds, args.loadgen, out_dir)
    machine = common.machine()
    print(f"peers: {', '.join(names)}; logs in {out_dir}; machine {machine}", flush=True)
    started = time.monotonic()
    figures: dict[str, Any] = {
        "routers": names,
        "config": {
            "upstreams": args.upstreams, "ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms,
            "isl": args.isl, "osl": args.osl, "concurrency": args.concurrency,
            "requests": args.requests, "rounds": args.rounds, "loadgen": args.loadgen,
            "fault_requests": args.fault_requests, "fedgate_capacity": args.capacity,
        },
    }  # fmt: skip
    with Procs(out_dir) as owner:
        ups = fleet.start(owner, args.upstreams, pace)
        running: list[routers.Router] = []
        try:
            for name in names:
                t0 = time.monotonic()
                running.append(routers.start(name, owner, ups.urls, capacity=args.capacity))
                print(f"  {name} ready in {time.monotonic() - t0:.1f} s", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {}
            if not args.faults_only:
                runs = compare(running, owner, ups, plan)
                figures["runs"] = runs
                figures["summary"] = report.summarize(runs)
            fault_results = None
            if not args.no_faults:
                groups = {r.name: r.groups(owner) for r in running}

                def between() -> None:
                    for g in groups.values():
                        settle(g, max_s=3.0)

                fault_results = faults.fault_rounds(
                    running, owner, ups, pace, args.fault_requests, args.concurrency, args.osl,
                    between=between,
                )  # fmt: skip
                figures["faults"] = fault_results
        finally:
            for r in running:
                r.close(owner)
    figures["targets"] = report.targets(runs, figures.get("summary", {}), fault_results)
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    if "summary" in figures:
        print(f"## Comparison: {args.rounds} rounds × {args.requests} requests at "
              f"{args.concurrency} streams (medians over rounds; ms)\n")  # fmt: skip
        print(report.table(figures["summary"]))
        print()
    if fault_results:
        print(
            f"## Fault rounds: {args.fault_requests} requests per scenario, upstream 0 at fault\n"
        )
        print(report.fault_table(fault_results))
        print()
    if figures["targets"]:
        print(report.targets_table(figures["targets"]))
        print()
    common.emit("peers", figures, machine)
    return figures


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
