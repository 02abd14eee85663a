"""``fedgate up``: a whole federation on this machine, stopped cleanly by Ctrl-C.

Starts an embedded nats-server (unless ``--nats`` names one), a gateway and demo
workers as child processes, waits until the gateway sees every worker, shows a probe
request, then serves until SIGINT/SIGTERM and stops every child it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from fedgate.cli import nats_config
from shared.client import FedClient
from shared.config import NatsConfig
from shared.natsserver import NatsServer
from shared.runtime import stop_event
from shared.subjects import Subjects

DEMO_WORKERS = [
    # node id, region, model, capabilities, privacy, cost
    ("us-west-1", "us-west", "llama-3-8b", ("generate", "code"), "internal", "0.6"),
    ("eu-west-1", "eu-west", "llama-3-8b", ("generate", "code"), "confidential", "0.4"),
    ("us-west-embed", "us-west", "bge-small", ("embed",), "internal", "0.2"),
    ("eu-west-embed", "eu-west", "bge-small", ("embed",), "confidential", "0.2"),
]


def state_dir() -> Path:
    """The user's state folder for fedgate (XDG_STATE_HOME/fedgate)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fedgate"


def free_port(start: int = 4222, tries: int = 50) -> int:
    """``start`` or the next port after it that nobody listens on."""
    for port in range(start, start + tries):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{start + tries - 1}")


def worker_specs(count: int) -> list[tuple[str, str, str, tuple[str, ...], str, str]]:
    """``count`` demo workers cycling through two regions and two models."""
    specs = []
    for i in range(count):
        node, region, model, caps, privacy, cost = DEMO_WORKERS[i % len(DEMO_WORKERS)]
        suffix = "" if i < len(DEMO_WORKERS) else f"-{i // len(DEMO_WORKERS) + 1}"
        specs.append((node + suffix, region, model, caps, privacy, cost))
    return specs


class Children:
    """The child processes ``up`` started; stops them all, whatever happens."""

    def __init__(self, nats_args: list[str]) -> None:
        self.nats_args = nats_args
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> None:
        """Start ``fedgate <args>`` as a child."""
        cmd = [sys.executable, "-m", "fedgate.cli", *args, *self.nats_args]
        self.procs.append((name, subprocess.Popen(cmd, stdin=subprocess.DEVNULL)))

    def dead(self) -> list[str]:
        """Names of children that exited."""
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child, wait, SIGKILL stragglers."""
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _nats_flags(cfg: NatsConfig) -> list[str]:
    flags = ["--nats", cfg.url]
    for flag, value in (
        ("--user", cfg.user),
        ("--password", cfg.password),
        ("--token", cfg.token),
        ("--creds", cfg.creds_file),
        ("--nkey", cfg.nkey_seed),
        ("--tls-ca", cfg.tls_ca),
        ("--tls-cert", cfg.tls_cert),
        ("--tls-key", cfg.tls_key),
    ):
        if value:
            flags += [flag, value]
    return flags


async def up(args: argparse.Namespace) -> int:
    """Run the federation until Ctrl-C."""
    stop = stop_event()
    server: NatsServer | None = None
    cfg = nats_config(args)
    if not args.url:
        port = free_port()
        data = Path(args.state_dir) if args.state_dir else state_dir() / f"nats-{port}"
        print(f"starting embedded nats-server on 127.0.0.1:{port} (data: {data})", flush=True)
        server = NatsServer(port=port, jetstream=True, data_dir=data).start()
        cfg = NatsConfig(url=server.url)
    children = Children(_nats_flags(cfg))
    try:
        children.start("gateway", "gateway", "--gateway-id", "gw-1")
        specs = worker_specs(args.workers)
        for node, region, model, caps, privacy, cost in specs:
            cap_flags = [x for cap in caps for x in ("--capability", cap)]
            children.start(
                node,
                "worker",
                "--node-id",
                node,
                "--region",
                region,
                "--model",
                model,
                *cap_flags,
                "--privacy",
                privacy,
                "--cost",
                cost,
                "--ttft-ms",
                "40",
                "--token-interval-ms",
                "15",
                "--capacity",
                "8",
            )
        print(f"starting a gateway and {len(specs)} workers ...", flush=True)
        async with await FedClient.connect(cfg) as client:
            await _wait_ready(client, {s[0] for s in specs}, children)
            _banner(cfg.url)
            if not args.no_probe:
                await _probe(client)
        print("serving; press Ctrl-C to stop", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            dead = children.dead()
            if dead and not stop.is_set():
                print(f"fedgate up: child exited unexpectedly: {', '.join(dead)}", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping ...", flush=True)
        children.stop()
        if server is not None:
            server.stop()
        print("stopped", flush=True)


async def _wait_ready(client: FedClient, nodes: set[str], children: Children) -> None:
    """Poll the gateway's node list until every worker is there (60 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    seen: set[str] = set()
    while loop.time() < deadline:
        if children.dead():
            raise RuntimeError(f"child exited during start-up: {', '.join(children.dead())}")
        try:
            msg = await client.nc.request(Subjects().gateway_nodes, b"", timeout=0.5)
            import json

            seen = {n["node_id"] for n in json.loads(msg.data)["nodes"]}
        except Exception:
            seen = set()
        if nodes <= seen:
            print(f"ready: gateway sees {len(seen)} nodes", flush=True)
            return
        await asyncio.sleep(0.2)  # polling the gateway's catalog under a deadline
    raise RuntimeError(f"gateway did not see all workers within 60 s (saw {sorted(seen)})")


def _banner(url: str) -> None:
    print(
        f"""
fedgate is up. NATS: {url}

  fedgate infer generate 'hello there' --stream --nats {url}
  fedgate nodes --nats {url}
  fedgate top --nats {url}
  nats req --server {url} infer.generate '{{"input":"hello","stream":true}}' --wait-for-empty
""",
        flush=True,
    )


async def _probe(client: FedClient) -> None:
    print("probe: infer.generate 'hello federation' (streaming)\n  ", end="", flush=True)
    async with client.stream("generate", "hello federation", params={"max_tokens": 12}) as stream:
        async for chunk in stream:
            print(chunk.text, end="", flush=True)
    print(
        f"\n  served by {stream.served_by}, {stream.tokens} tokens, {stream.attempts} attempt(s)\n",
        flush=True,
    )
