"""The ``fedgate`` command line: one entry point, one subcommand per job.

Configuration precedence (highest first): flags, ``FEDGATE_*`` environment variables,
the TOML file from ``--config`` / ``FEDGATE_CONFIG``, built-in defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shared.config import DEFAULT_NATS_URL, NatsConfig, build, env_values, load_file

EXAMPLES = {
    "up": "fedgate up                      # embedded NATS, a gateway, 4 demo workers\n"
    "  fedgate up --workers 6 --nats nats://127.0.0.1:4222",
    "gateway": "fedgate gateway --nats nats://127.0.0.1:4222 --max-retries 3",
    "worker": "fedgate worker --node-id gpu-1 --region us-west --model llama-3-8b \\\n"
    "      --capability generate --capability code --capacity 8",
    "infer": "fedgate infer generate 'hello there' --stream\n"
    "  fedgate infer embed 'some text' --json",
    "nodes": "fedgate nodes\n  fedgate nodes --json | jq '.[].nodes[].node_id'",
    "stats": "fedgate stats --json",
    "route": "fedgate route generate 'hello' --privacy confidential --region eu-west",
    "top": "fedgate top            # q quits\n  fedgate top --once     # print one frame",
    "bench": "fedgate bench routing\n  fedgate bench all",
}


def _nats_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NATS connection")
    g.add_argument(
        "--nats",
        dest="url",
        metavar="URL",
        help=f"NATS server URL(s), comma separated (env FEDGATE_NATS_URL; "
        f"default {DEFAULT_NATS_URL})",
    )
    g.add_argument("--user", help="NATS user (env FEDGATE_NATS_USER)")
    g.add_argument("--password", help="NATS password (env FEDGATE_NATS_PASSWORD)")
    g.add_argument("--token", help="NATS token (env FEDGATE_NATS_TOKEN)")
    g.add_argument("--creds", dest="creds_file", metavar="FILE", help="NATS credentials file")
    g.add_argument("--nkey", dest="nkey_seed", metavar="FILE", help="NATS nkey seed file")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate to verify the server")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate")
    g.add_argument("--tls-key", metavar="FILE", help="client key")
    g.add_argument("--inbox-prefix", metavar="PREFIX", help="reply inbox prefix (permissions)")
    g.add_argument("--config", metavar="FILE", help="TOML config file (env FEDGATE_CONFIG)")


def nats_config(args: argparse.Namespace) -> NatsConfig:
    """The NatsConfig from flags, env and the config file."""
    file = load_file(getattr(args, "config", None) or os.environ.get("FEDGATE_CONFIG"))
    flags = {k: getattr(args, k, None) for k in NatsConfig.__struct_fields__}
    return build(NatsConfig, file.get("nats", {}), env_values("NATS", NatsConfig), flags)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from fedgate import commands

    parser = argparse.ArgumentParser(
        prog="fedgate",
        description="fedgate: one service out of a fleet of inference nodes, over NATS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `fedgate <command> --help` for a command's options and examples.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FEDGATE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help: str, fn: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=fn)
        _nats_args(p)
        return p

    p = add(
        "up", "run a whole local federation (embedded NATS unless --nats is given)", commands.cmd_up
    )
    p.add_argument("--workers", type=int, default=4, help="demo workers to start (default 4)")
    p.add_argument("--no-probe", action="store_true", help="skip the probe request")
    p.add_argument("--state-dir", help="where the embedded server keeps its data")

    p = add("gateway", "run a gateway", commands.cmd_gateway)
    p.add_argument("--gateway-id")
    p.add_argument("--max-retries", type=int)
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, metavar="S")
    p.add_argument("--first-chunk-timeout", dest="first_chunk_timeout_s", type=float, metavar="S")
    p.add_argument("--stall-timeout", dest="stall_timeout_s", type=float, metavar="S")
    p.add_argument("--max-queue", type=int)
    p.add_argument(
        "--strategy",
        choices=[
            "least_latency",
            "round_robin",
            "least_connections",
            "weighted_random",
            "consistent_hash",
            "power_of_two",
        ],
    )
    p.add_argument("--public-root", help="public subject root (default infer)")
    p.add_argument("--internal-root", help="internal subject root (default fed)")

    p = add("worker", "run a worker node", commands.cmd_worker)
    p.add_argument("--node-id", help="node id (default: host-pid)")
    p.add_argument("--region")
    p.add_argument(
        "--model", dest="models", action="append", metavar="MODEL", help="model id (repeatable)"
    )
    p.add_argument(
        "--capability",
        dest="capabilities",
        action="append",
        metavar="CAP",
        help="capability (repeatable; default generate)",
    )
    p.add_argument(
        "--backend",
        default="synthetic",
        choices=["synthetic"],
        help="inference backend (default synthetic)",
    )
    p.add_argument("--capacity", type=int, help="max concurrent requests")
    p.add_argument("--privacy", choices=["public", "internal", "confidential", "restricted"])
    p.add_argument("--cost", type=float, help="relative cost 0..1")
    p.add_argument("--gpu", action="store_true", default=None)
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--heartbeat-interval", dest="heartbeat_interval_s", type=float, metavar="S")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="synthetic: time to first token")
    p.add_argument(
        "--token-interval-ms", type=float, default=0.0, help="synthetic: time between tokens"
    )
    p.add_argument("--fail-rate", type=float, default=0.0, help="synthetic: failure probability")
    p.add_argument(
        "--fail-after-tokens", type=int, default=0, help="synthetic: fail mid-stream after N tokens"
    )
    p.add_argument("--hang", action="store_true", help="synthetic: accept and never answer")
    p.add_argument("--public-root")
    p.add_argument("--internal-root")

    p = add("infer", "send one request and print the answer", commands.cmd_infer)
    p.add_argument("capability")
    p.add_argument("text")
    _request_args(p)
    p.add_argument("--stream", action="store_true", help="stream tokens as they arrive")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")

    p = add("nodes", "list the nodes every gateway sees", commands.cmd_nodes)
    p.add_argument("--json", action="store_true")
    p = add("stats", "show every gateway's statistics", commands.cmd_stats)
    p.add_argument("--json", action="store_true")
    p = add("route", "explain how a request would be routed (dry run)", commands.cmd_route)
    p.add_argument("capability")
    p.add_argument("text", nargs="?", default="")
    _request_args(p)
    p.add_argument("--json", action="store_true")

    p = add("top", "live dashboard of the federation", commands.cmd_top)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, help="refresh seconds")
    p.add_argument(
        "--tab",
        default="all",
        choices=["all", "catalog", "health", "routing", "circuits", "stats", "policies"],
    )

    p = add("bench", "run the benchmarks", commands.cmd_bench)
    p.add_argument("which", nargs="?", default="all")
    return parser


def _request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model")
    p.add_argument("--tenant", dest="tenant_id")
    p.add_argument("--privacy", choices=["public", "internal", "confidential", "restricted"])
    p.add_argument("--region", help="your region (locality)")
    p.add_argument(
        "--allowed-region",
        dest="allowed_regions",
        action="append",
        metavar="R",
        help="data residency: only these regions (repeatable)",
    )
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedgate`` command."""
    from shared.runtime import setup_logging

    parser = make_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        code: Any = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, ConnectionError) as exc:
        print(f"fedgate: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
