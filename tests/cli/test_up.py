"""``fedgate up`` for real: it serves, answers, and leaves nothing behind on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.cli.util import fedgate

pytestmark = pytest.mark.slow


class Up:
    """A running ``fedgate up`` whose stdout is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Up:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedgate", "up", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return cls(proc)

    async def wait_for(self, text: str, timeout: float = 90.0) -> None:
        """Read stdout until a line contains ``text``."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.out):
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError("fedgate up exited early:\n" + "".join(self.out))
                self.out.append(line.decode())

    async def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C; read stdout to the end (every child holds it open) and wait for exit."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(timeout):
            rest = await self.proc.stdout.read()
            self.out.append(rest.decode())
            return await self.proc.wait()

    @property
    def text(self) -> str:
        return "".join(self.out)

    @property
    def pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"pid (\d+)", self.text)]

    @property
    def url(self) -> str:
        match = re.search(r"Connect to NATS at (\S+)", self.text)
        assert match, self.text
        return match.group(1)

    def kill(self) -> None:
        if self.proc.returncode is None:
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()


def alive(pids: list[int]) -> list[int]:
    """The pids that still name a process."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGATE_")}
    return env | {"FEDGATE_LOG_LEVEL": "warning"} | extra


async def run_and_stop(up: Up) -> None:
    """Wait until ``up`` serves, Ctrl-C it, check that it and every child are gone."""
    try:
        await up.wait_for("serving on")
        port = up.url.rsplit(":", 1)[1]
        assert len(up.pids) >= 4  # supervisor, gateway, workers (+ nats-server)
        assert await up.interrupt() == 0, up.text
        assert up.text.rstrip().endswith("stopped")
        assert alive(up.pids) == []
        assert processes_mentioning(f"127.0.0.1:{port} ") == []
    finally:
        up.kill()


async def test_up_embedded_serves_answers_and_stops_cleanly(tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
    up = await Up.start("--workers", "2", env=env)
    try:
        await up.wait_for("serving on")
        assert "✓ nats-server nats://127.0.0.1:" in up.text
        assert "served by " in up.text  # the probe request
        assert f"nats req --server {up.url} infer.generate" in up.text
        answer = fedgate("infer", "generate", "hello", "--nats", up.url)
        assert answer.returncode == 0, answer.stderr
        assert "served by us-west-1" in answer.stderr or "served by eu-west-1" in answer.stderr
    finally:
        await run_and_stop(up)
    state = tmp_path / "state" / "fedgate"
    assert list(state.glob("nats-*/jetstream"))  # JetStream data under the state folder
    assert [p for p in state.rglob("*") if "lock" in p.name.lower()] == []

    again = await Up.start("--workers", "1", "--no-probe", env=env)  # a second run works
    await run_and_stop(again)


async def test_up_joins_a_given_nats_server(nats_url: str, tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
    up = await Up.start("--nats", nats_url, "--workers", "2", "--no-probe", env=env)
    try:
        await up.wait_for("serving on")
        assert "nats-server" not in up.text
        assert up.url == nats_url
        answer = fedgate("infer", "generate", "hi", "--stream", "--nats", nats_url)
        assert answer.returncode == 0, answer.stderr
    finally:
        await run_and_stop(up)
    assert not (tmp_path / "state").exists()
