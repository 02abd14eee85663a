"""Stopping when NATS is gone: a gateway or worker told to stop ends, bounded, and a
second signal ends it at once (the trial of issue 15 saw a gateway log "Connection
refused" for 90 s after SIGTERM and ignore a second one). Real processes throughout."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.natsserver import NatsServer
from tests.helpers import Proc, processes
from tests.llm.conftest import wait_until


def _exited_within(proc: subprocess.Popen[bytes], seconds: float) -> float:
    started = time.monotonic()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args!r} still running {seconds} s after the signal")
    return time.monotonic() - started


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_stop_ends_when_nats_is_gone(tmp_path: Path, role: str) -> None:
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    log = str(tmp_path / f"{role}.log")
    with processes() as procs:
        args = ["--nats", server.url] + (["--node-id", "w1"] if role == "worker" else [])
        proc = Proc(role, *args, log_path=log, log_level="info")
        procs.append(proc)
        wait_until(lambda: "serving" in proc.log_tail(), 30, f"the {role} serves", proc.proc)
        server.kill()  # NATS goes away, then the operator stops the process
        proc.proc.send_signal(signal.SIGTERM)
        took = _exited_within(proc.proc, 30)
        print(f"{role} stopped {took:.1f} s after SIGTERM with NATS gone")
        assert "Traceback" not in proc.log_tail(200), proc.log_tail(60)
    server.cleanup()


def test_a_second_signal_ends_a_stopping_gateway_at_once(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    with processes() as procs:
        proc = Proc("gateway", "--nats", server.url, log_path=str(tmp_path / "gw.log"),
                    log_level="info")  # fmt: skip
        procs.append(proc)
        wait_until(lambda: "serving" in proc.log_tail(), 30, "the gateway serves", proc.proc)
        server.kill()
        proc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in proc.log_tail(), 10, "stopping", proc.proc)
        proc.proc.send_signal(signal.SIGTERM)
        _exited_within(proc.proc, 5)
        # 130: our second-signal exit; -15: the signal itself once the loop has let go
        assert proc.proc.returncode in (0, 130, -signal.SIGTERM), proc.proc.returncode
    server.cleanup()
