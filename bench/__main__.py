"""``python -m bench`` (``make bench``): every benchmark, then a summary of the targets.

Runs, each as its own process (each starts and stops its own nats-server and fedgate
processes): routing (``bench.bench_routing``), overhead, streaming, ingest and memory.
Their output is shown as it comes; then a table of every target (ratio or figure,
limit, PASS/MISS) and, as the last line, one JSON object with all figures.

Usage: ``python -m bench [--quick] [--strict] [NAME ...]`` (~4 min; quick ~2.5 min).
``--strict`` exits 1 when a target is missed; a benchmark that fails always exits 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench import common as c

BENCHES = ("routing", "overhead", "streaming", "ingest", "memory")
ROUTE_P99_MAX_US = 50.0


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run ``bench.bench_<name>``, echo its output, return its final JSON object."""
    cmd = [sys.executable, "-m", f"bench.bench_{name}"]
    if quick and name != "routing":  # bench_routing has one length (~20 s)
        cmd.append("--quick")
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    last = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line
        code = proc.wait()
    except BaseException:
        proc.terminate()  # it cleans up its own server and processes
        proc.wait(30)
        raise
    if code != 0:
        return {"error": f"exited with {code}", "elapsed_s": round(time.monotonic() - started)}
    try:
        out: dict[str, Any] = json.loads(last)
    except json.JSONDecodeError:
        return {"error": "no JSON line", "elapsed_s": round(time.monotonic() - started)}
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def collect_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target of every benchmark (routing's is checked here: it prints none)."""
    targets: dict[str, dict[str, Any]] = {}
    routing = results.get("routing", {})
    if "route_10000" in routing:
        p99 = routing["route_10000"]["p99_us"]
        targets["route_10000_p99_us"] = {
            "value": p99, "op": "<=", "limit": ROUTE_P99_MAX_US, "pass": p99 <= ROUTE_P99_MAX_US
        }  # fmt: skip
    for name in BENCHES[1:]:
        targets.update(results.get(name, {}).get("targets", {}))
    return targets


LABELS = {
    "overhead_added_p50_ratio": "gateway added p50 / relay added p50 (sequential)",
    "overhead_rps64_ratio": "gateway req/s / relay req/s, 64 in flight",
    "streaming_c16_tps_ratio": "gateway tokens/s / relay tokens/s, 16 streams",
    "route_10000_p99_us": "route() p99 with 10,000 nodes (µs)",
    "ingest_10k_cpu_share": "heartbeat ingest, 10,000 nodes at 1 Hz (share of a core)",
    "memory_per_stream": "gateway memory per open stream (KB)",
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and print the summary."""
    p = argparse.ArgumentParser(description="run every fedgate benchmark")
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {BENCHES})"
    )
    p.add_argument("--quick", action="store_true", help="short runs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    names = args.names or list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    before = c.machine()
    print(f"machine: {before['nproc']} cores, {before['cpu']}, load {before['loadavg']}")
    started = time.monotonic()
    results: dict[str, Any] = {}
    try:
        for name in names:
            results[name] = run_one(name, args.quick)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    targets = collect_targets(results)
    print(f"\n== summary ({time.monotonic() - started:.0f} s, load {c.machine()['loadavg']})")
    print(f"{'target':<58} {'measured':>9} {'limit':>8}  result")
    for key, t in targets.items():
        print(
            f"{LABELS.get(key, key):<58} {t['value']:>9.3f} {t['op']:>2}{t['limit']:>6g}"
            f"  {c.verdict(t['pass'])}"
        )
    failed = [n for n, r in results.items() if "error" in r]
    for n in failed:
        print(f"{n}: FAILED ({results[n]['error']})")
    c.emit(
        "all",
        {
            "elapsed_s": round(time.monotonic() - started, 1),
            "targets": targets,
            "results": results,
        },
        before,
    )
    if failed:
        return 1
    return 1 if args.strict and not all(t["pass"] for t in targets.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
