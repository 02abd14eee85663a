"""Shared helpers of the process benchmarks: a server and child processes, statistics, output.

Every benchmark here starts its own nats-server (``shared.natsserver``) and real fedgate
processes (one synthetic worker, one gateway, the bare relay), measures from the bench
process with raw nats-py on uvloop, and stops everything it started on the way out,
whether it ends normally, by an exception or by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Any, Self

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared import headers as h
from shared.natsserver import NatsServer
from shared.subjects import Subjects

NODE_ID = "bench-1"
MODEL = "bench"
SUBJECTS = Subjects()
RELAY_ROOT = "relay"
"""The bare relay serves ``relay.generate`` (``Subjects(RELAY_ROOT).infer("generate")``)."""
TRACED_ROOT = "infertr"
"""A second gateway with tracing on serves ``infertr.generate``."""
CANDIDATE_ROOT = "infercand"
"""A gateway run from another checkout (``--candidate DIR``) serves ``infercand.generate``."""


# -- statistics -------------------------------------------------------------------


def pct(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``samples`` (nearest rank, no interpolation)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def target(name: str, value: float, op: str, limit: float, unit: str = "") -> dict[str, Any]:
    """One target check (``op`` is "<=" or ">="), printed and returned for the JSON line."""
    ok = value <= limit if op == "<=" else value >= limit
    print(f"target {name}: {value:.3f}{unit} {op} {limit:g}{unit}  {verdict(ok)}")
    return {"value": round(value, 4), "op": op, "limit": limit, "pass": ok}


def emit(bench: str, figures: dict[str, Any], machine: dict[str, Any] | None = None) -> None:
    """The last line of every benchmark: one JSON object (with the machine it ran on and
    the load average at the end, when ``machine`` is given)."""
    if machine is not None:
        figures = {
            **figures,
            "machine": machine,
            "loadavg_after": [round(x, 2) for x in load_average()],
        }
    print(json.dumps({"bench": bench, **figures}), flush=True)


# -- machine ----------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """Cores, CPU model, Python, load average: printed with every figure."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in load_average()],
    }


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- processes --------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Stack:
    """A nats-server and child processes; everything is stopped on exit.

    SIGTERM is turned into KeyboardInterrupt while the stack is open, so that a
    terminated benchmark still runs its cleanup.
    """

    def __init__(self) -> None:
        self.server = NatsServer()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._old_term: Any = None

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> Self:
        self._old_term = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.server.start()
        except BaseException:
            self.server.cleanup()
            raise
        return self

    def spawn(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        quiet: bool = False,
        tree: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child process owned by this stack (its code from ``tree`` if given)."""
        full_env = dict(os.environ, **(env or {}))
        if tree:  # a checkout's modules take precedence over the installed tree
            full_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (os.path.abspath(tree), full_env.get("PYTHONPATH")) if p
            )
        proc = subprocess.Popen(
            args,
            env=full_env,
            cwd=tree,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if quiet else None,
        )
        self.procs.append(proc)
        return proc

    def fedgate(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        quiet: bool = False,
        tree: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """``fedgate <args>`` as a child process, logging warnings only."""
        cmd = [sys.executable, "-m", "fedgate.cli", "--log-level", "warning", *args]
        return self.spawn(cmd, env=env, quiet=quiet, tree=tree)

    def worker(self, *extra: str, capacity: int = 256) -> subprocess.Popen[bytes]:
        """The synthetic worker every variant is measured against (no delays by default)."""
        return self.fedgate(
            "worker", "--nats", self.url, "--node-id", NODE_ID, "--model", MODEL,
            "--capacity", str(capacity), "--heartbeat-interval", "1", *extra,
        )  # fmt: skip

    def gateway(
        self, *extra: str, env: dict[str, str] | None = None, tree: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A gateway process (``fedgate gateway``), from checkout ``tree`` if given."""
        return self.fedgate("gateway", "--nats", self.url, *extra, env=env, quiet=True, tree=tree)

    def relay(self) -> subprocess.Popen[bytes]:
        """The bare relay (``bench/relay.py``) in front of the worker."""
        cmd = [sys.executable, "-m", "bench.relay", "--nats", self.url, "--node-id", NODE_ID]
        return self.spawn([*cmd, "--root", RELAY_ROOT])

    def check_alive(self) -> None:
        """Raise if a child process has exited."""
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}")

    def __exit__(self, *exc: object) -> None:
        try:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            for p in self.procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            self.server.cleanup()
            signal.signal(signal.SIGTERM, self._old_term)


# -- NATS side --------------------------------------------------------------------


async def connect(url: str, **options: Any) -> Client:
    """A benchmark connection: fails fast, large pending limits."""
    return await nats.connect(
        url,
        max_reconnect_attempts=2,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        pending_size=8 * 1024 * 1024,
        **options,
    )


class StubNC:
    """Just enough of a nats-py client to drive a service's callbacks in-process: nothing
    is sent; ``callbacks`` maps each subscribed subject to its callback."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[Msg], Awaitable[None]]] = {}
        self.last_reply = ""
        self.is_connected = True

    def new_inbox(self) -> str:
        return "_INBOX.hot"

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None, **_: Any) -> Any:
        self.callbacks[subject] = cb
        return self

    async def unsubscribe(self) -> None:
        pass

    async def flush(self, timeout: float = 0) -> None:
        pass

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
    ) -> None:
        if reply:
            self.last_reply = reply

    async def request(self, subject: str, payload: bytes = b"", **_: Any) -> Msg:
        return Msg(self, subject=subject, data=b"{}")  # type: ignore[arg-type]


def is_result(msg: Any) -> bool:
    """A successful non-streaming reply (a body and no error header)."""
    return bool(msg.data) and not (msg.headers and h.FED_ERROR in msg.headers)


async def wait_ready(
    nc: Client,
    subject: str,
    body: bytes | Callable[[], bytes],
    stack: Stack,
    timeout_s: float = 30.0,
) -> None:
    """Request on ``subject`` until it answers with a result (catalog filled, relay up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check_alive()
        try:
            msg = await nc.request(subject, body() if callable(body) else body, timeout=1.0)
            if is_result(msg):
                return
        except (NoRespondersError, NatsTimeout):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{subject} not answering within {timeout_s}s")
        await asyncio.sleep(0.05)  # readiness poll under a deadline


def dispatch_body(request: bytes, request_id: str) -> bytes:
    """What a gateway publishes to ``fed.node.<id>.infer`` for attempt 1 of ``request``."""
    return b'{"request":%b,"attempt":1,"resume":null,"capability":"generate","request_id":"%b"}' % (
        request,
        request_id.encode(),
    )


def parse_args(
    doc: str | None,
    argv: Sequence[str] | None = None,
    candidate: bool = False,
    flags: dict[str, str] | None = None,
) -> argparse.Namespace:
    """The common command line: ``--quick`` for a short run [, ``--candidate DIR``], and
    any further on/off ``flags`` ({"--name": help})."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (fewer rounds and samples)")
    for flag, text in (flags or {}).items():
        p.add_argument(flag, action="store_true", help=text)
    if candidate:
        p.add_argument(
            "--candidate",
            metavar="DIR",
            help="also measure a gateway run from this checkout (a patched copy of the tree)",
        )
    return p.parse_args(argv)


async def settle(pids: Sequence[int], quiet_s: float = 0.01, max_s: float = 15.0) -> float:
    """Wait until the processes together use under ``quiet_s`` CPU seconds per 0.1 s.

    A variant's leftovers (a tracing exporter flushing spans, a backlog) must not be
    charged to the next variant. Returns the seconds waited.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        before = sum(cpu_seconds(p) for p in pids)
        await asyncio.sleep(0.1)
        if sum(cpu_seconds(p) for p in pids) - before < quiet_s:
            break
    return time.monotonic() - started


async def rounds(
    variants: dict[str, Callable[[], Awaitable[Any]]],
    n_rounds: int,
    between: Callable[[], Awaitable[Any]] | None = None,
) -> dict[str, list[Any]]:
    """Run each variant once per round, round-robin (rotating the start), n_rounds times;
    ``between`` (e.g. ``settle``) is awaited after every run."""
    names = list(variants)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(n_rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(await variants[name]())
            if between is not None:
                await between()
    return out


def json_from_module_in(tree: str | None, module: str, flag: str, quick: bool) -> dict[str, Any]:
    """Run ``python -m module flag`` in a fresh process (with the code of ``tree`` first on
    the path when given) and return the JSON object of its last line."""
    env = dict(os.environ)
    if tree:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), here])
    cmd = [sys.executable, "-m", module, flag, *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, env=env, cwd=tree or None, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
