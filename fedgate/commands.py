"""The one-shot and service commands behind ``fedgate`` (the click tree is ``fedgate.cli``).

Each takes the parsed ``Invocation`` and returns the exit code. ``nodes``, ``stats`` and
``route`` print every gateway's reply as one rich table, or with ``--json`` the list of
replies exactly as ``json.dumps(replies, indent=2)`` writes it (scripts depend on it).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from fedgate.backends import backend_namespace
from fedgate.gather import gather
from fedgate.options import Invocation, Params, gateway_config, load, nats_config
from shared import errors
from shared import messages as m
from shared.config import WorkerConfig
from shared.runtime import run
from shared.subjects import Subjects


def gateway(inv: Invocation) -> int:
    """``fedgate gateway``."""
    from gateway.main import serve

    return run(serve(nats_config(inv.params), gateway_config(inv.params)))


def worker_config(params: Params) -> WorkerConfig:
    """The WorkerConfig from flags, env and the file's ``[worker]`` table."""
    from worker.node import default_node_id

    return load(WorkerConfig, "worker", params, {"node_id": default_node_id()})


def worker(inv: Invocation) -> int:
    """``fedgate worker``."""
    from worker.backends import registry
    from worker.main import serve

    cfg = worker_config(inv.params)
    backend = registry.create(backend_namespace(inv.params))
    return run(serve(nats_config(inv.params), cfg, backend))


def request_fields(params: Params) -> dict[str, Any]:
    """Request fields from the request flags (``--model``, ``--privacy``, ``--timeout`` ...)."""
    qos: dict[str, Any] = {}
    if params.get("privacy"):
        qos["privacy"] = params["privacy"]
    if params.get("region"):
        qos["region"] = params["region"]
    if params.get("allowed_regions"):
        qos["allowed_regions"] = list(params["allowed_regions"])
    extra: dict[str, Any] = {}
    if params.get("max_tokens"):
        extra["max_tokens"] = params["max_tokens"]
    if params.get("seed") is not None:
        extra["seed"] = params["seed"]
    return {
        "request_id": params.get("request_id"),
        "model": params.get("model"),
        "tenant_id": params.get("tenant_id"),
        "qos": qos or None,
        "params": extra or None,
        "timeout_ms": int(params["timeout"] * 1000),
    }


def error_line(exc: errors.FedError) -> str:
    """How ``infer`` reports a failed request: with its ``Retry-After`` when it has one
    (the whole seconds the header carries)."""
    line = f"fedgate: {exc.code} {exc.kind}: {exc.message}"
    if isinstance(exc, errors.RetryAfter) and exc.retry_after_s is not None:
        line += f" (retry after {max(1, math.ceil(exc.retry_after_s))} s)"
    return line


def infer(inv: Invocation) -> int:
    """``fedgate infer``."""
    return run(_infer(inv.params))


async def _infer(params: Params) -> int:
    from shared.client import FedClient

    client = await FedClient.connect(nats_config(params), timeout_s=params["timeout"])
    fields = request_fields(params)
    try:
        if params["stream"]:
            await _infer_stream(client, params, fields)
        else:
            result = await client.infer(params["capability"], params["text"], **fields)
            if params["json"]:
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
        print(error_line(exc), file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


async def _infer_stream(client: Any, params: Params, fields: dict[str, Any]) -> None:
    started = time.monotonic()
    async with client.stream(params["capability"], params["text"], **fields) as stream:
        async for chunk in stream:
            if params["json"]:
                print(json.dumps(msgspec.to_builtins(chunk)), flush=True)
            else:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    if not params["json"]:
        sys.stdout.write("\n")
    print(
        f"-- served by {stream.served_by}, {stream.tokens} tokens, "
        f"{stream.attempts} attempt(s), finish: {stream.finish_reason}, "
        f"{(time.monotonic() - started) * 1000:.0f} ms",
        file=sys.stderr,
    )


def json_text(replies: list[dict[str, Any]]) -> str:
    """``--json`` output of ``nodes``/``stats``/``route``: pinned by tests/cli/data/golden."""
    return json.dumps(replies, indent=2)


def _control(inv: Invocation, subject: str, body: bytes, table: Callable[[Any], Any]) -> int:
    replies = run(gather(nats_config(inv.params), subject, body))
    if not replies:
        print("fedgate: no gateway answered (is one running? try `fedgate up`)", file=sys.stderr)
        return 1
    if inv.params["json"]:
        print(json_text(replies))
    else:
        from fedgate.tables import show

        show(table(replies))
    return 1 if all("error" in r for r in replies) else 0


def nodes(inv: Invocation) -> int:
    """``fedgate nodes``."""
    from fedgate.tables import nodes_table

    return _control(inv, Subjects().gateway_nodes, b"", nodes_table)


def stats(inv: Invocation) -> int:
    """``fedgate stats``."""
    from fedgate.tables import stats_table

    return _control(inv, Subjects().gateway_stats, b"", stats_table)


def route(inv: Invocation) -> int:
    """``fedgate route``."""
    from fedgate.tables import route_table
    from shared.client import FedClient

    request = FedClient.build_request(inv.params["text"], **request_fields(inv.params))
    subject = Subjects().gateway_route(inv.params["capability"])
    return _control(inv, subject, m.encode(request), route_table)


def bench(inv: Invocation) -> int:
    """``fedgate bench``."""
    import runpy

    which = inv.params["which"]
    name = "bench" if which == "all" else f"bench.bench_{which}"
    started = time.monotonic()
    runpy.run_module(name, run_name="__main__")
    print(f"-- bench {which} took {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0
