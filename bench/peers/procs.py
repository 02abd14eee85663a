"""The processes of a peers run: started, watched (CPU, RSS) and stopped by one owner.

``Procs`` owns every child process a run starts (upstreams, nats-server, gateways,
workers, peers, the load generator) and stops them all on the way out, also on an
exception, Ctrl-C or SIGTERM (turned into ``KeyboardInterrupt`` while it is open). Each
child runs in its own session (process group), so stopping it also stops what it forked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import IO, Any, Self

from bench.common import cpu_seconds, rss_bytes


def free_port() -> int:
    """A TCP port the OS says is free now (for servers that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    url: str, body: Any = None, timeout: float = 2.0, headers: dict[str, str] | None = None
) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer; raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll ``condition`` (exceptions count as not yet) until it holds, or raise."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout_s}s: {what}")
        time.sleep(0.1)  # readiness poll under a deadline


def children(pid: int) -> list[int]:
    """``pid`` and every descendant of it alive now (from /proc)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent_of[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [pid], [pid]
    while frontier:
        kids = [p for p, pp in parent_of.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def cpu_of(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (gone processes count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(pid)
    return total


def rss_of(pids: Iterable[int]) -> int:
    """Summed resident set size of ``pids`` in bytes (gone processes count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            total += rss_bytes(pid)
    return total


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Procs:
    """Owner of a run's child processes; logs go to ``log_dir/<name>.log``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._old_term: Any = None

    def __enter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._old_term = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` as child ``name`` (stderr, and stdout unless piped, to its log)."""
        log = open(self.log_dir / f"{name}.log", "ab")  # closed in __exit__
        self._logs.append(log)
        proc = subprocess.Popen(
            args,
            env=dict(os.environ, **(env or {})),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        """The pid of child ``name``."""
        return self.procs[name].pid

    def alive(self, name: str) -> bool:
        """Whether child ``name`` is still running."""
        return self.procs[name].poll() is None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to child ``name``'s process group (default: SIGKILL, a crash)."""
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            if sig == signal.SIGKILL:
                proc.wait()

    def stop(self, name: str, timeout_s: float = 5.0) -> None:
        """SIGTERM child ``name``'s group, then SIGKILL after ``timeout_s``."""
        proc = self.procs.pop(name)
        _stop_all([proc], timeout_s)

    def check_alive(self, names: Iterable[str]) -> None:
        """Raise if one of ``names`` has exited."""
        for name in names:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} (log: {self.log_dir}/{name}.log)"
                )

    def __exit__(self, *exc: object) -> None:
        try:
            _stop_all(list(self.procs.values()), 5.0)
            self.procs.clear()
        finally:
            for log in self._logs:
                log.close()
            signal.signal(signal.SIGTERM, self._old_term)


def _stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
