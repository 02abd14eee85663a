"""Running the real ``fedgate`` command in tests."""

from __future__ import annotations

import os
import subprocess
import sys

from fedgate.gather import gather_on
from shared.subjects import Subjects
from tests.helpers import connect, eventually


def _popen(args: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedgate", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, FEDGATE_LOG_LEVEL="warning"),
    )


def fedgate(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fedgate ARGS`` to completion, capturing its output."""
    return fedgate_all([*args], timeout=timeout)[0]


def fedgate_all(
    *commands: list[str], timeout: float = 30.0
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``fedgate`` commands at once (they only read); results in order."""
    procs = [_popen(tuple(c)) for c in commands]
    results = []
    try:
        for cmd, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


async def wait_for_nodes(url: str, *node_ids: str, timeout: float = 30.0) -> None:
    """Until some gateway on ``url`` lists every one of ``node_ids``."""
    nc = await connect(url)
    try:

        async def seen() -> bool:
            replies = await gather_on(nc, Subjects().gateway_nodes, window_s=0)
            listed = {n["node_id"] for r in replies for n in r.get("nodes", [])}
            return listed >= set(node_ids)

        await eventually(seen, timeout, f"a gateway lists {node_ids}")
    finally:
        await nc.close()
