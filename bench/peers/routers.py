"""The routers under test, each started as real processes over the same upstreams.

A router is named ``kind[:policy]``:

- ``direct``: no router; the clients call the upstreams round-robin themselves;
- ``fedgate[:strategy]``: a nats-server, one ``fedgate gateway --http-port`` and one
  ``fedgate worker --backend openai --upstream URL`` per upstream (charged: all of them);
- ``fedgate@DIR[:strategy]``: the same, run from another checkout ``DIR`` (for instance
  ``git worktree add /tmp/before <commit>``): a before/after of fedgate in one run;
- ``sglang:{round_robin|cache_aware|power_of_two}``: ``sglang_router.launch_router``
  from its own venv;
- ``litellm:{simple-shuffle|least-busy|latency-based-routing}``: the LiteLLM proxy
  from its own venv, one ``model_list`` entry per upstream.

The peers' venvs live under ``$FEDGATE_PEERS_DIR`` (default ``~/.cache/fedgate-peers``,
built by ``make peers-setup``). Every router answers ``POST /v1/chat/completions`` at
each of its ``urls`` with the bearer ``API_KEY``.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers.procs import Procs, children, free_port, http_json, wait_until
from shared.natsserver import NatsServer

MODEL = "bench"
API_KEY = "sk-bench-peers"
PEERS_DIR = Path(os.environ.get("FEDGATE_PEERS_DIR", Path.home() / ".cache" / "fedgate-peers"))

SGLANG_POLICIES = ("round_robin", "cache_aware", "power_of_two")
LITELLM_STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing")
ALL = (
    "direct",
    "fedgate",
    *(f"sglang:{p}" for p in SGLANG_POLICIES),
    *(f"litellm:{s}" for s in LITELLM_STRATEGIES),
)
"""Every router variant ``--routers all`` measures."""


def peer_python(venv: str) -> Path:
    """The interpreter of peer venv ``venv`` (sglang, litellm, aiperf)."""
    return PEERS_DIR / venv / "bin" / "python"


def have_peer(venv: str) -> bool:
    """Whether ``make peers-setup`` built venv ``venv``."""
    return (PEERS_DIR / venv / ".installed").exists() and peer_python(venv).exists()


@dataclass(slots=True)
class Router:
    """One running router: where clients call it and which processes it costs."""

    name: str
    urls: list[str]
    """Base URLs (``http://host:port``) the clients spread over, round-robin."""
    procs: list[str] = field(default_factory=list)
    """Names (in ``Procs``) of the processes charged to this router."""
    nats: NatsServer | None = None

    def groups(self, owner: Procs) -> dict[str, list[int]]:
        """The live pids charged to this router, by part (``gateway``, ``workers`` and
        ``nats`` for fedgate, ``router`` for a peer), children included."""
        parts: dict[str, list[int]] = {}
        for name in self.procs:
            if name in owner.procs and owner.alive(name):
                if "-worker" in name:
                    part = "workers"
                else:
                    part = "gateway" if "-gateway" in name else "router"
                parts.setdefault(part, []).extend(children(owner.pid(name)))
        if self.nats is not None and self.nats.proc is not None:
            parts["nats"] = [self.nats.proc.pid]
        return parts

    def close(self, owner: Procs) -> None:
        """Stop the router's processes (workers first), then its nats-server."""
        for name in reversed(self.procs):
            if name in owner.procs:
                owner.stop(name)
        if self.nats is not None:
            self.nats.cleanup()
            self.nats = None


def ready_request(base: str, timeout_s: float = 2.0) -> bool:
    """One small chat completion through ``base`` answers 200 with a choice."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ready"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        answer = http_json(f"{base}/v1/chat/completions", body, timeout_s, headers)
    except urllib.error.HTTPError:
        return False
    return bool(answer.get("choices"))


def start(
    spec: str,
    owner: Procs,
    upstreams: Sequence[str],
    timeout_s: float = 90.0,
    capacity: int = 64,
    gateway_args: Sequence[str] = (),
    name: str | None = None,
    gateways: int = 1,
) -> Router:
    """Start router ``spec`` over ``upstreams`` and wait until it answers.

    ``capacity``: each fedgate worker's ``--capacity``; ``gateway_args``: more flags for
    ``fedgate gateway``; ``name``: the router's name in the figures and logs (default
    ``spec``); ``gateways``: fedgate gateways (one queue group, each with its own front
    door: the clients alternate between them)."""
    kind, _, policy = spec.partition(":")
    if kind == "direct":
        return Router(name or spec, list(upstreams))
    tag = (name or spec).replace(":", "-").replace("/", "_")
    kind, _, checkout = kind.partition("@")
    if kind == "fedgate":
        router = _fedgate(
            tag, owner, upstreams, policy or None, capacity, gateway_args, checkout or None,
            gateways,
        )  # fmt: skip
    elif kind == "sglang":
        router = _sglang(tag, owner, upstreams, policy or "cache_aware")
    elif kind == "litellm":
        router = _litellm(tag, owner, upstreams, policy or "simple-shuffle")
    else:
        raise ValueError(f"unknown router {spec!r} (one of {', '.join(ALL)})")
    router.name = name or spec
    try:
        wait_until(
            lambda: ready_request(router.urls[0]),
            timeout_s,
            f"{spec} answering at {router.urls[0]}",
            owner.procs[router.procs[0]],
        )
    except BaseException:
        router.close(owner)
        raise
    return router


def _fedgate(
    tag: str,
    owner: Procs,
    upstreams: Sequence[str],
    strategy: str | None,
    capacity: int,
    gateway_args: Sequence[str],
    checkout: str | None = None,
    gateways: int = 1,
) -> Router:
    """fedgate's processes; ``checkout``: run the code of that directory instead of this
    one (its own ``fedgate.cli`` first on ``PYTHONPATH``, this interpreter)."""
    where: dict[str, object] = {}
    if checkout:
        root = str(Path(checkout).resolve())
        if not (Path(root) / "fedgate" / "cli.py").exists():
            raise ValueError(f"{checkout!r} is not a fedgate checkout (no fedgate/cli.py)")
        where = {"cwd": root, "env": {"PYTHONPATH": root}}
    nats = NatsServer(data_dir=owner.log_dir / f"{tag}-nats")
    nats.start()
    fedgate = [sys.executable, "-m", "fedgate.cli", "--log-level", "warning"]
    strategy_args = ["--strategy", strategy] if strategy else []
    config = owner.log_dir / f"{tag}-gateway.toml"
    config.write_text(f'[gateway]\napi_keys = {{ "{API_KEY}" = "bench" }}\n')
    names, urls = [], []
    for g in range(gateways):
        gw, port = f"{tag}-gateway" + (f"{g}" if g else ""), free_port()
        owner.spawn(
            gw,
            [*fedgate, "gateway", "--nats", nats.url, "--config", str(config), "--http-port",
             str(port), *strategy_args, *gateway_args],
            **where,  # type: ignore[arg-type]
        )  # fmt: skip
        names.append(gw)
        urls.append(f"http://127.0.0.1:{port}")
    for i, url in enumerate(upstreams):
        name = f"{tag}-worker{i}"
        owner.spawn(
            name,
            [*fedgate, "worker", "--nats", nats.url, "--node-id", f"{tag}-up{i}",
             "--backend", "openai", "--upstream", url, "--model", MODEL,
             "--capacity", str(capacity)],
            **where,  # type: ignore[arg-type]
        )  # fmt: skip
        names.append(name)
    return Router(tag, urls, names, nats)


def _sglang(tag: str, owner: Procs, upstreams: Sequence[str], policy: str) -> Router:
    port, metrics = free_port(), free_port()
    owner.spawn(
        tag,
        [str(peer_python("sglang")), "-m", "sglang_router.launch_router",
         "--host", "127.0.0.1", "--port", str(port),
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics),
         "--policy", policy, "--worker-urls", *upstreams],
        env={"HF_HUB_OFFLINE": "1", "RUST_LOG": "warn"},
    )  # fmt: skip
    return Router(tag, [f"http://127.0.0.1:{port}"], [tag])


def _litellm(tag: str, owner: Procs, upstreams: Sequence[str], strategy: str) -> Router:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{url}/v1",
                    "api_key": "unused",
                },
            }
            for url in upstreams
        ],
        "router_settings": {"routing_strategy": strategy},  # the defaults otherwise
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": API_KEY},
    }
    path = owner.log_dir / f"{tag}.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(config, indent=1))
    litellm = peer_python("litellm").parent / "litellm"
    owner.spawn(
        tag,
        [str(litellm), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
    )
    return Router(tag, [f"http://127.0.0.1:{port}"], [tag])
