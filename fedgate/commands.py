"""The subcommands behind ``fedgate`` (argument parsing lives in ``fedgate.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import msgspec

from fedgate import render
from fedgate.cli import nats_config
from shared import errors
from shared import messages as m
from shared.config import GatewayConfig, WorkerConfig, build, env_values, load_file
from shared.connection import connect
from shared.runtime import run
from shared.subjects import Subjects


def _file(args: argparse.Namespace) -> dict[str, Any]:
    import os

    return load_file(getattr(args, "config", None) or os.environ.get("FEDGATE_CONFIG"))


def _flags(args: argparse.Namespace, struct: type[Any]) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in struct.__struct_fields__}


def cmd_gateway(args: argparse.Namespace) -> int:
    """``fedgate gateway``."""
    from gateway.main import serve

    file = _file(args)
    cfg = build(
        GatewayConfig,
        file.get("gateway", {}),
        env_values("GATEWAY", GatewayConfig),
        _flags(args, GatewayConfig),
    )
    return run(serve(nats_config(args), cfg))


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The WorkerConfig from flags, env and file."""
    from worker.node import default_node_id

    file = _file(args)
    flags = _flags(args, WorkerConfig)
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    if labels:
        flags["labels"] = labels
    for key in ("models", "capabilities"):
        if flags.get(key):
            flags[key] = tuple(flags[key])
    base = {"node_id": default_node_id()}
    return build(
        WorkerConfig, base, file.get("worker", {}), env_values("WORKER", WorkerConfig), flags
    )


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
            async with client.stream(args.capability, args.text, **fields) as stream:
                async for chunk in stream:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            sys.stdout.write("\n")
            print(
                f"-- served by {stream.served_by}, {stream.tokens} tokens, "
                f"{stream.attempts} attempt(s), finish: {stream.finish_reason}",
                file=sys.stderr,
            )
        else:
            result = await client.infer(args.capability, args.text, **fields)
            if args.json:
                print(json.dumps(msgspec.to_builtins(result.result)))
            else:
                print(
                    result.output
                    if result.result.embedding is None
                    else json.dumps(result.result.embedding)
                )
                print(
                    f"-- served by {result.served_by} ({result.result.region}), "
                    f"{result.result.tokens} tokens, {result.attempts} attempt(s), "
                    f"gateway overhead {result.overhead_us} µs",
                    file=sys.stderr,
                )
    except errors.FedError as exc:
        print(f"fedgate: {exc.code} {exc.kind}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


async def gather(
    args: argparse.Namespace,
    subject: str,
    body: bytes = b"",
    window_s: float = 0.3,
    timeout_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Ask every gateway: collect the replies arriving within ``window_s`` of the first."""
    nc = await connect(nats_config(args))
    try:
        inbox = nc.new_inbox()
        replies: list[dict[str, Any]] = []
        first = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            if msg.headers and msg.headers.get("Status") == "503":
                first.set()
                return
            err = errors.from_headers(msg.headers)
            if err is not None:
                replies.append({"error": err.kind, "message": err.message})
            elif msg.data:
                replies.append(json.loads(msg.data))
            first.set()

        sub = await nc.subscribe(inbox, cb=on_msg)
        await nc.publish(subject, body, reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(first.wait(), timeout_s)
        except TimeoutError:
            return []
        await asyncio.sleep(window_s)  # the gathering window for more gateways' answers
        await sub.unsubscribe()
        return replies
    finally:
        await nc.close()


def _control(args: argparse.Namespace, subject: str, body: bytes, show: Any) -> int:
    replies = run(_gather_or_fail(args, subject, body))
    if not replies:
        print("fedgate: no gateway answered (is one running? try `fedgate up`)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(replies, indent=2))
    else:
        print(show(replies))
    return 0


async def _gather_or_fail(args: argparse.Namespace, subject: str, body: bytes) -> Any:
    return await gather(args, subject, body)


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
    """``fedgate up``."""
    from fedgate.up import up

    return run(up(args))


def cmd_bench(args: argparse.Namespace) -> int:
    """``fedgate bench``."""
    import runpy

    name = "bench" if args.which == "all" else f"bench.bench_{args.which}"
    started = time.monotonic()
    runpy.run_module(name, run_name="__main__")
    print(f"-- bench {args.which} took {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0
