"""Fixtures of the LLM tests: real processes (nats-server, gateways, workers, upstreams)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.natsserver import NatsServer

API_KEY = "sk-fedgate-test"
TENANT = "acme"


def free_port() -> int:
    """A TCP port the OS says is free now (for servers that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, key: str | None = API_KEY, timeout: float = 2.0) -> Any:
    """GET a JSON document (raises on connection errors and HTTP errors)."""
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll ``condition`` (exceptions count as not yet) until it holds, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)  # sleep-ok: polling interval under a deadline (sync fixture)


def models_at(base: str) -> set[str]:
    """The model ids the front door at ``base`` lists."""
    return {m["id"] for m in get_json(f"{base}/v1/models")["data"]}


def gateway_config(tmp_path: Path) -> Path:
    """A TOML config with one API key (so the front door authenticates)."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\napi_keys = {{ "{API_KEY}" = "{TENANT}" }}\n')
    return path


def llama_server_cmd(model: Path, port: int, *extra: str) -> list[str]:
    """``python -m llama_cpp.server`` serving ``model`` on loopback.

    ``--interrupt_requests false``: by default that server abandons a running generation
    whenever another request arrives, which would cut streams short under any concurrency.
    """
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--interrupt_requests", "false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for a whole module (its processes start once)."""
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
