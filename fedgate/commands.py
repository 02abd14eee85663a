"""The subcommands behind ``fedgate`` (argument parsing lives in ``fedgate.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from fedgate import render
from fedgate.cli import config_file, nats_config
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.config import GatewayConfig, WorkerConfig, build, env_values
from shared.runtime import run
from shared.subjects import Subjects

if TYPE_CHECKING:  # nats (and aiohttp under it) is imported when a command connects
    from nats.aio.client import Client
    from nats.aio.msg import Msg

GATHER_WINDOW_S = 0.3
"""After the first gateway answers, how long to wait for the others' answers."""


def _flags(args: argparse.Namespace, struct: type[Any]) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in struct.__struct_fields__}


def gateway_config(args: argparse.Namespace) -> GatewayConfig:
    """The GatewayConfig from flags, env and the file's ``[gateway]`` table."""
    return build(
        GatewayConfig,
        config_file(args).get("gateway", {}),
        env_values("GATEWAY", GatewayConfig),
        _flags(args, GatewayConfig),
    )


def cmd_gateway(args: argparse.Namespace) -> int:
    """``fedgate gateway``."""
    from gateway.main import serve

    return run(serve(nats_config(args), gateway_config(args)))


_LIST_FIELDS = ("models", "capabilities")


def _worker_env() -> dict[str, Any]:
    """``FEDGATE_WORKER_*``, with lists as ``a,b`` and labels as ``k=v,k2=v2``."""
    env: dict[str, Any] = env_values("WORKER", WorkerConfig)
    for key in _LIST_FIELDS:
        if key in env:
            env[key] = tuple(x.strip() for x in env[key].split(",") if x.strip())
    if "labels" in env:
        env["labels"] = _labels(env["labels"].split(","))
    return env


def _labels(items: list[str]) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in items if item.strip()]
    bad = [item for item, pair in zip(items, pairs, strict=False) if len(pair) != 2]
    if bad:
        raise ValueError(f"labels must be KEY=VALUE, got {bad[0]!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The WorkerConfig from flags, env and the file's ``[worker]`` table."""
    from worker.node import default_node_id

    flags = _flags(args, WorkerConfig)
    labels = _labels(getattr(args, "label", None) or [])
    if labels:
        flags["labels"] = labels
    for key in _LIST_FIELDS:
        if flags.get(key):
            flags[key] = tuple(flags[key])
    base = {"node_id": default_node_id()}
    return build(WorkerConfig, base, config_file(args).get("worker", {}), _worker_env(), flags)


def cmd_worker(args: argparse.Namespace) -> int:
    """``fedgate worker``."""
    from worker.backends import registry
    from worker.main import serve

    cfg = worker_config(args)
    return run(serve(nats_config(args), cfg, registry.create(args)))


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Request fields from the shared request flags."""
    qos: dict[str, Any] = {}
    if args.privacy:
        qos["privacy"] = args.privacy
    if args.region:
        qos["region"] = args.region
    if args.allowed_regions:
        qos["allowed_regions"] = args.allowed_regions
    params: dict[str, Any] = {}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    if args.seed is not None:
        params["seed"] = args.seed
    return {
        "model": args.model,
        "tenant_id": args.tenant_id,
        "qos": qos or None,
        "params": params or None,
        "timeout_ms": int(args.timeout * 1000),
    }


def cmd_infer(args: argparse.Namespace) -> int:
    """``fedgate infer``."""
    return run(_infer(args))


async def _infer(args: argparse.Namespace) -> int:
    from shared.client import FedClient

    client = await FedClient.connect(nats_config(args), timeout_s=args.timeout)
    fields = request_fields(args)
    try:
        if args.stream:
            await _infer_stream(client, args, fields)
        else:
            result = await client.infer(args.capability, args.text, **fields)
            if args.json:
                print(json.dumps(msgspec.to_builtins(result.result)))
            else:
                embedding = result.result.embedding
                print(result.output if embedding is None else json.dumps(embedding))
            print(
                f"-- served by {result.served_by} ({result.result.region}), "
                f"{result.result.tokens} tokens, {result.attempts} attempt(s), "
                f"{result.result.latency_ms:.0f} ms on the node, "
                f"gateway overhead {result.overhead_us} µs",
                file=sys.stderr,
            )
    except errors.FedError as exc:
        print(f"fedgate: {exc.code} {exc.kind}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


async def _infer_stream(client: Any, args: argparse.Namespace, fields: dict[str, Any]) -> None:
    started = time.monotonic()
    async with client.stream(args.capability, args.text, **fields) as stream:
        async for chunk in stream:
            if args.json:
                print(json.dumps(msgspec.to_builtins(chunk)), flush=True)
            else:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    if not args.json:
        sys.stdout.write("\n")
    print(
        f"-- served by {stream.served_by}, {stream.tokens} tokens, "
        f"{stream.attempts} attempt(s), finish: {stream.finish_reason}, "
        f"{(time.monotonic() - started) * 1000:.0f} ms",
        file=sys.stderr,
    )


async def gather_on(
    nc: Client,
    subject: str,
    body: bytes = b"",
    window_s: float = GATHER_WINDOW_S,
    timeout_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Ask every gateway: the replies arriving within ``window_s`` of the first one.

    Gateways answer control subjects outside any queue group, so one publish reaches
    all of them; nobody listening comes back at once as a no-responders status.
    Replies are sorted by gateway id; an error reply becomes ``{"error", "message"}``.
    """
    replies: list[dict[str, Any]] = []
    first = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        first.set()
        if msg.headers and msg.headers.get(h.NATS_STATUS) == "503":
            return
        err = errors.from_headers(msg.headers)
        if err is not None:
            replies.append({"error": err.kind, "message": err.message})
        elif msg.data:
            replies.append(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(subject, body, reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(first.wait(), timeout_s)
        except TimeoutError:
            return []
        if replies:
            await asyncio.sleep(window_s)  # the gathering window: other gateways' answers
    finally:
        await sub.unsubscribe()
    return sorted(replies, key=lambda r: str(r.get("gateway", "")))


async def gather(args: argparse.Namespace, subject: str, body: bytes = b"") -> list[dict[str, Any]]:
    """``gather_on`` over a connection of its own (failing fast when NATS is down)."""
    from shared.connection import connect

    nc = await connect(nats_config(args))
    try:
        return await gather_on(nc, subject, body)
    finally:
        await nc.close()


def _control(
    args: argparse.Namespace, subject: str, body: bytes, show: Callable[[list[Any]], str]
) -> int:
    replies = run(gather(args, subject, body))
    if not replies:
        print("fedgate: no gateway answered (is one running? try `fedgate up`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(replies, indent=2))
    else:
        print(show(replies))
    return 1 if all("error" in r for r in replies) else 0


def cmd_nodes(args: argparse.Namespace) -> int:
    """``fedgate nodes``."""
    return _control(args, Subjects().gateway_nodes, b"", render.nodes_table)


def cmd_stats(args: argparse.Namespace) -> int:
    """``fedgate stats``."""
    return _control(args, Subjects().gateway_stats, b"", render.stats_table)


def cmd_route(args: argparse.Namespace) -> int:
    """``fedgate route``."""
    from shared.client import FedClient

    request = FedClient.build_request(args.text, **request_fields(args))
    return _control(
        args, Subjects().gateway_route(args.capability), m.encode(request), render.route_table
    )


def cmd_top(args: argparse.Namespace) -> int:
    """``fedgate top``."""
    from fedgate.top import top

    return run(top(args))


def cmd_up(args: argparse.Namespace) -> int:
    """``fedgate up`` (the foreground side, unless this is the supervisor it starts)."""
    from fedgate.up import front, up

    if not args.supervised:
        return front(args.argv)
    return run(up(args))


def cmd_bench(args: argparse.Namespace) -> int:
    """``fedgate bench``."""
    import runpy

    name = "bench" if args.which == "all" else f"bench.bench_{args.which}"
    started = time.monotonic()
    runpy.run_module(name, run_name="__main__")
    print(f"-- bench {args.which} took {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0
