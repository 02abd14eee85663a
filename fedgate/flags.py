"""The hand-made options several ``fedgate`` commands share (the config options are
generated: ``fedgate.settings``).

``general``: ``--config`` and ``--log-level``; ``request_options``: the request flags of ``infer``
and ``route`` (``--timeout`` in seconds); ``request_id_option``: ``infer``'s ``--request-id``;
``json_flag``: ``--json``. Each is a click
decorator; ``GENERAL`` and ``REQUEST`` name their ``--help`` sections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec

from fedgate.help import Option
from shared.messages import Privacy, RequestId

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ["debug", "info", "warning", "error"]

GENERAL = "Configuration and logging"
REQUEST = "Request"


def log_level_option() -> Callable[[F], F]:
    """``--log-level`` (the group's and every command's; env FEDGATE_LOG_LEVEL)."""
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default=None,
        cls=Option,
        group=GENERAL,
        help="Log level.",
        default_text="info",
        env="FEDGATE_LOG_LEVEL",
    )


def general(fn: F) -> F:
    """``--config`` and ``--log-level`` (every command), after the NATS options."""
    fn = click.option(
        "--config",
        metavar="FILE",
        cls=Option,
        group=GENERAL,
        env="FEDGATE_CONFIG",
        help="TOML config file (tables [nats], [gateway], [worker]).",
    )(fn)
    return log_level_option()(fn)


def request_options(fn: F) -> F:
    """The request flags of ``infer`` and ``route``."""
    group: dict[str, Any] = {"cls": Option, "group": REQUEST}
    options: list[Callable[[F], F]] = [
        click.option("--model", metavar="M", help="Only nodes serving this model.", **group),
        click.option("--tenant", "tenant_id", metavar="T", help="Tenant id.", **group),
        click.option(
            "--privacy",
            type=click.Choice([p.value for p in Privacy]),
            help="Privacy level.",
            default_text="internal",
            **group,
        ),
        click.option("--region", metavar="R", help="Your region (locality).", **group),
        click.option(
            "--allowed-region",
            "allowed_regions",
            multiple=True,
            metavar="R",
            help="Data residency: only these regions (repeatable).",
            **group,
        ),
        click.option(
            "--max-tokens", type=click.IntRange(1), metavar="N", help="Output budget.", **group
        ),
        click.option("--seed", type=int, metavar="N", help="Sampling seed.", **group),
        click.option(
            "--timeout",
            type=click.FloatRange(0, min_open=True),
            default=30.0,
            metavar="S",
            help="Deadline of the request, retries included.",
            default_text="30 s",
            **group,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _request_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            msgspec.convert(value, RequestId)  # the protocol's own rule
        except msgspec.ValidationError:
            raise click.BadParameter("1 to 128 of A-Z, a-z, 0-9, '_' and '-'") from None
    return value


def request_id_option(fn: F) -> F:
    """``--request-id`` (``infer``): the request's identity, with its tenant."""
    return click.option(
        "--request-id",
        metavar="ID",
        callback=_request_id,
        cls=Option,
        group=REQUEST,
        default_text="16 random hex digits",
        help="Request id (1-128 of A-Za-z0-9_-). While a request of the same id and tenant is "
        "in flight, another body is a 409 duplicate; the same body takes it over "
        "(docs/protocol.md, Request identity).",
    )(fn)


def json_flag(what: str) -> Callable[[F], F]:
    """``--json``, with ``what`` as its help."""
    return click.option("--json", "json", is_flag=True, cls=Option, help=what)
