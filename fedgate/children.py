"""The processes of ``fedgate up``: the foreground relay, the children, their stop.

Two processes: the command you run stays in the foreground and only relays signals
(``front``); the supervisor that owns the children runs in a session of its own. A
Ctrl-C on the terminal goes to the whole foreground process group, so without this the
nats-server would die at once and the workers could not drain. The supervisor also
stops everything if the foreground process disappears, even by SIGKILL
(``watch_parent``). ``Children`` starts ``fedgate`` child processes and stops them
(SIGTERM, then SIGKILL after a timeout in seconds); ``child_nats`` gives them ``up``'s
NATS settings. ``fedgate.up`` re-exports these names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from shared.config import NatsConfig


def state_dir() -> Path:
    """The user's state folder for fedgate (``$XDG_STATE_HOME/fedgate``)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fedgate"


def free_port(start: int = 4222, tries: int = 50) -> int:
    """``start`` or the next port after it that nobody listens on."""
    for port in range(start, start + tries):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{start + tries - 1}")


def front(argv: list[str]) -> int:
    """The foreground side: run the supervisor in its own session, relay stop signals."""
    cmd = [sys.executable, "-m", "fedgate", *argv, "--supervised"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)

    def relay(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    return proc.wait()


class Children:
    """The fedgate child processes ``up`` started; stops them all, whatever happens."""

    def __init__(self, common_args: list[str], env: dict[str, str]) -> None:
        self.common_args = common_args
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> int:
        """Start ``fedgate <args>`` as a child; returns its pid."""
        cmd = [sys.executable, "-m", "fedgate", *args, *self.common_args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=self.env)
        self.procs.append((name, proc))
        return proc.pid

    def dead(self) -> list[str]:
        """Names of children that exited."""
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self, names: set[str] | None = None, timeout_s: float = 10.0) -> None:
        """SIGTERM the named children (default all), wait, SIGKILL stragglers."""
        chosen = [p for name, p in self.procs if names is None or name in names]
        for proc in chosen:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in chosen:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def child_nats(cfg: NatsConfig) -> tuple[list[str], dict[str, str]]:
    """Flags and environment that give a child the same NATS settings as ``up``.

    Secrets travel in the environment, not on command lines that ``ps`` shows.
    """
    flags = ["--nats", cfg.url]
    for flag, value in (
        ("--user", cfg.user),
        ("--creds", cfg.creds_file),
        ("--nkey", cfg.nkey_seed),
        ("--tls-ca", cfg.tls_ca),
        ("--tls-cert", cfg.tls_cert),
        ("--tls-key", cfg.tls_key),
    ):
        if value:
            flags += [flag, value]
    env = {"FEDGATE_NATS_PASSWORD": cfg.password, "FEDGATE_NATS_TOKEN": cfg.token}
    return flags, {k: v for k, v in env.items() if v}


def stop_event() -> asyncio.Event:
    """Set by SIGINT, SIGTERM or SIGHUP."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, event.set)
    return event


async def watch_parent(stop: asyncio.Event) -> None:
    """Set ``stop`` when the process that started us is gone (we were reparented)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            print("fedgate up: the foreground process is gone; stopping", file=sys.stderr)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):  # check period, cut short by a stop
            await asyncio.wait_for(stop.wait(), 0.5)
