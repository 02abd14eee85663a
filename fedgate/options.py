"""Command-line options generated from the config Structs, and the configs they build.

Imports no gateway or worker module (the dashboard builds its NatsConfig here).

One definition per setting. A field of ``NatsConfig``, ``GatewayConfig`` or
``WorkerConfig`` (``shared/config.py``) gives

- its TOML key: ``request_timeout_s`` in the file's ``[gateway]`` table;
- its environment variable: ``FEDGATE_GATEWAY_REQUEST_TIMEOUT_S``;
- its flag: the key with dashes, less a seconds suffix (``--request-timeout``), unless
  ``RENAMED`` keeps an older name (``url`` is ``--nats``, ``models`` is ``--model``);
- its type, bounds (``Meta(gt=0, le=86_400)`` shows as ``0<x<=86400``), default, unit;
- its help text: the field's docstring (``HELP`` below for the fields that have none).

A flag that is not given is ``None`` (or empty), so the lower layers show through when
the Struct is built by ``shared.config.build``: flags > ``FEDGATE_*`` environment >
the ``--config`` file > defaults.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import itertools
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import msgspec
import msgspec.inspect as mi

from fedgate.help import Option
from shared.config import (
    Config,
    GatewayConfig,
    NatsConfig,
    WorkerConfig,
    build,
    env_values,
    load_file,
)
from shared.messages import Privacy

Params = Mapping[str, Any]
"""A command's parameters as click parsed them (the config flags not given are None)."""

C = TypeVar("C", bound=Config)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Invocation:
    """One parsed command line: the command, its parameters, the words it came from."""

    command: str
    params: Params
    argv: tuple[str, ...] = ()


TABLES: dict[str, type[Config]] = {
    "nats": NatsConfig,
    "gateway": GatewayConfig,
    "worker": WorkerConfig,
}
"""TOML table (and ``FEDGATE_<TABLE>_`` prefix) -> the Struct it fills."""

GROUPS = {
    "nats": "NATS connection (file table [nats], env FEDGATE_NATS_*)",
    "gateway": "Gateway (file table [gateway], env FEDGATE_GATEWAY_*)",
    "worker": "Worker node (file table [worker], env FEDGATE_WORKER_*)",
}
"""The ``--help`` section of each table's options."""

RENAMED: dict[tuple[str, str], str] = {
    ("nats", "url"): "--nats",
    ("nats", "creds_file"): "--creds",
    ("nats", "nkey_seed"): "--nkey",
    ("nats", "name"): "--connection-name",
    ("worker", "models"): "--model",
    ("worker", "capabilities"): "--capability",
    ("worker", "labels"): "--label",
}
"""Flags whose name is not the key's (the names the CLI has always had)."""

METAVARS = {
    "url": "URL",
    "creds_file": "FILE",
    "nkey_seed": "FILE",
    "tls_ca": "FILE",
    "tls_cert": "FILE",
    "tls_key": "FILE",
    "inbox_prefix": "PREFIX",
    "name": "NAME",
    "gateway_id": "ID",
    "node_id": "ID",
    "public_root": "ROOT",
    "internal_root": "ROOT",
    "http_host": "HOST",
    "region": "REGION",
    "models": "MODEL",
    "capabilities": "CAP",
    "labels": "K=V",
}
"""Metavars by key; otherwise the unit (``S``, ``MS``, ``BYTES``), ``N`` or ``TEXT``."""

HELP = {
    ("nats", "user"): "NATS user.",
    ("nats", "password"): "NATS password (prefer the environment to the command line).",
    ("nats", "token"): "NATS token (prefer the environment to the command line).",
    ("nats", "creds_file"): "NATS credentials file (.creds, operator/JWT mode).",
    ("nats", "tls_ca"): "CA certificate to verify the server.",
    ("nats", "tls_cert"): "Client certificate (mutual TLS).",
    ("nats", "tls_key"): "Client key (mutual TLS).",
    ("nats", "inbox_prefix"): "Reply inbox prefix (narrow it where permissions restrict replies).",
    ("nats", "connect_timeout_s"): "Give up connecting after this long.",
    ("nats", "name"): "Connection name, as the server's monitoring shows it.",
    ("gateway", "public_root"): "Public subject root: services ask on <root>.<capability>.",
    ("gateway", "internal_root"): "Internal subject root: heartbeats, node inboxes, control.",
    ("gateway", "max_retries"): "Dispatches after the first (retries and failovers).",
    ("gateway", "retry_backoff_initial_s"): "First backoff between two retries.",
    ("gateway", "retry_backoff_max_s"): "Longest backoff between two retries.",
    ("gateway", "breaker_half_open_successes"): "Successful probes that close a circuit again.",
    ("gateway", "health_recovery_threshold"): "Consecutive successes that make a node healthy.",
    ("gateway", "http_host"): "HTTP bind address.",
    ("worker", "node_id"): "Node id.",
    ("worker", "region"): "The node's region.",
    ("worker", "models"): "Model id (repeatable).",
    ("worker", "capabilities"): "Capability (repeatable).",
    ("worker", "capacity"): "Most concurrent requests.",
    ("worker", "privacy"): "Highest privacy level served.",
    ("worker", "cost"): "Relative cost.",
    ("worker", "gpu"): "The node has a GPU.",
    ("worker", "labels"): "A label KEY=VALUE (repeatable).",
    ("worker", "heartbeat_interval_s"): "Time between heartbeats (dropped after 3 missed).",
    ("worker", "drain_timeout_s"): "On stop, wait this long for in-flight work.",
    ("worker", "public_root"): "Public subject root (as the gateways').",
    ("worker", "internal_root"): "Internal subject root (as the gateways').",
}
"""Help of the fields that have no docstring in ``shared/config.py``."""

SHOWN_DEFAULTS = {
    ("gateway", "gateway_id"): "random",
    ("gateway", "http_port"): "off",
    ("gateway", "metrics_port"): "off",
    ("worker", "node_id"): "host-pid",
}
"""Defaults computed at run time, or ``None`` meaning something: shown as words."""

CHOICES = {("worker", "privacy"): tuple(p.value for p in Privacy)}
"""Allowed values of ``str`` fields (the gateway's strategies come from ``fedgate.cli``)."""

FILE_ONLY = frozenset({("gateway", "api_keys"), ("gateway", "tenant_limits")})
"""Settings with no flag: secrets, and tables that belong in a file."""

_UNITS = (("_ms", "ms", "MS"), ("_s", "s", "S"), ("_bytes", "bytes", "BYTES"))
"""Key suffix, unit shown after the default, metavar."""


class Kind(enum.Enum):
    """How a setting is given on the command line and in the environment."""

    VALUE = "value"
    """``--flag VALUE``; the environment's text is converted by msgspec."""
    SWITCH = "switch"
    """``--flag/--no-flag`` (a bool); ``true``/``false`` in the environment."""
    LIST = "list"
    """``--flag A --flag B`` (a tuple); ``A,B`` in the environment."""
    MAP = "map"
    """``--flag K=V --flag K2=V2`` (a dict); ``K=V,K2=V2`` in the environment."""


class KeyValue(click.ParamType[tuple[str, str]]):
    """``KEY=VALUE`` as a pair."""

    name = "K=V"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        """``"rack=a1"`` -> ``("rack", "a1")``."""
        if isinstance(value, tuple):
            return value
        try:
            return _pair(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


@dataclass(frozen=True, slots=True)
class Setting:
    """One config field as a command-line option."""

    table: str
    key: str
    flag: str
    kind: Kind
    type: click.ParamType[Any] | type[Any]
    metavar: str | None
    help: str
    default: str | None
    """The default as shown in ``--help`` (None: nothing to show)."""

    @property
    def env(self) -> str:
        """``FEDGATE_<TABLE>_<KEY>``."""
        return f"FEDGATE_{self.table}_{self.key}".upper()

    @property
    def file_key(self) -> str:
        """``table.key`` in the TOML file."""
        return f"{self.table}.{self.key}"

    def decorator(self, choices: Sequence[str] = ()) -> Callable[[F], F]:
        """The click option of this setting (not given: ``None``, or empty if repeatable)."""
        decls = [f"{self.flag}/--no-{self.flag[2:]}" if self.kind is Kind.SWITCH else self.flag]
        ptype = click.Choice(choices) if choices else self.type
        return click.option(
            *decls,
            self.key,
            cls=Option,
            type=None if self.kind is Kind.SWITCH else ptype,
            multiple=self.kind in (Kind.LIST, Kind.MAP),
            default=None,
            metavar=None if choices else self.metavar,
            help=self.help,
            group=GROUPS[self.table],
            default_text=self.default,
            env=self.env,
            file_key=self.file_key,
        )


@functools.cache
def field_docs(struct: type[Config]) -> dict[str, str]:
    """The docstrings under a Struct's fields, by field name (joined into one line)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(struct)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for stmt, after in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def settings(table: str) -> tuple[Setting, ...]:
    """Every field of the table's Struct that has a flag, in the Struct's order."""
    struct = TABLES[table]
    docs = field_docs(struct)
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    out = []
    for field in info.fields:
        where = (table, field.name)
        if where in FILE_ONLY:
            continue
        unit, unit_metavar = _unit(field.name)
        ftype = _without_none(field.type)
        kind, ptype = _param_type(ftype, CHOICES.get(where))
        flag = RENAMED.get(where) or "--" + _strip_seconds(field.name).replace("_", "-")
        metavar = METAVARS.get(field.name) or unit_metavar
        if metavar is None and kind is Kind.VALUE and not isinstance(ptype, click.Choice):
            metavar = "N" if isinstance(ftype, mi.IntType) else field.name.upper()
        if isinstance(ptype, click.Choice):
            metavar = None  # click shows [a|b|c]
        out.append(
            Setting(
                table=table,
                key=field.name,
                flag=flag,
                kind=kind,
                type=ptype,
                metavar=metavar,
                help=docs.get(field.name) or HELP.get(where, ""),
                default=SHOWN_DEFAULTS.get(where) or _shown_default(field.default, unit),
            )
        )
    return tuple(out)


def _unit(key: str) -> tuple[str, str | None]:
    for suffix, unit, metavar in _UNITS:
        if key.endswith(suffix):
            return unit, metavar
    return "", None


def _strip_seconds(key: str) -> str:
    return key.removesuffix("_s")


def _without_none(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return t


def _param_type(
    t: mi.Type, choices: Sequence[str] | None
) -> tuple[Kind, click.ParamType[Any] | type[Any]]:
    if isinstance(t, mi.BoolType):
        return Kind.SWITCH, bool
    if isinstance(t, mi.VarTupleType | mi.ListType):
        return Kind.LIST, str
    if isinstance(t, mi.DictType):
        return Kind.MAP, KeyValue()
    if choices:
        return Kind.VALUE, click.Choice(choices)
    if isinstance(t, mi.IntType | mi.FloatType):
        return Kind.VALUE, _number_range(t)
    return Kind.VALUE, str


def _number_range(t: mi.IntType | mi.FloatType) -> click.ParamType[Any]:
    low = t.gt if t.gt is not None else t.ge
    high = t.lt if t.lt is not None else t.le
    if isinstance(t, mi.IntType):
        return click.IntRange(
            None if low is None else int(low),
            None if high is None else int(high),
            min_open=t.gt is not None,
            max_open=t.lt is not None,
        )
    return click.FloatRange(low, high, min_open=t.gt is not None, max_open=t.lt is not None)


def _shown_default(value: Any, unit: str) -> str | None:
    if value is None or value is msgspec.NODEFAULT or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value} {unit}" if unit else str(value)


def config_options(
    table: str, choices: Mapping[str, Sequence[str]] | None = None
) -> Callable[[F], F]:
    """Add an option for every setting of ``table`` (in the Struct's order).

    ``choices`` restricts ``str`` settings by key (``{"strategy": [...]}``), for values
    a lower layer defines (the gateway's strategies: this module imports no gateway).
    """
    choices = choices or {}

    def add(fn: F) -> F:
        for setting in reversed(settings(table)):
            fn = setting.decorator(choices.get(setting.key, ()))(fn)
        return fn

    return add


# -- building the configs ------------------------------------------------------------


def config_file(params: Params) -> dict[str, Any]:
    """The TOML config file named by ``--config`` or ``FEDGATE_CONFIG`` (empty if none)."""
    return load_file(params.get("config") or os.environ.get("FEDGATE_CONFIG"))


def flag_layer(table: str, params: Params) -> dict[str, Any]:
    """The table's settings given as flags (the others None)."""
    out: dict[str, Any] = {}
    for s in settings(table):
        value = params.get(s.key)
        if s.kind is Kind.LIST:
            value = tuple(value) if value else None
        elif s.kind is Kind.MAP:
            value = dict(value) if value else None
        out[s.key] = value
    return out


def env_layer(table: str) -> dict[str, Any]:
    """``FEDGATE_<TABLE>_*``, with lists as ``a,b`` and maps as ``k=v,k2=v2``."""
    env: dict[str, Any] = env_values(table.upper(), TABLES[table])
    info = mi.type_info(TABLES[table])
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        if field.name not in env:
            continue
        ftype = _without_none(field.type)
        items = [x.strip() for x in env[field.name].split(",") if x.strip()]
        if isinstance(ftype, mi.VarTupleType | mi.ListType):
            env[field.name] = tuple(items)
        elif isinstance(ftype, mi.DictType):
            env[field.name] = dict(_pair(x) for x in items)
    return env


def load(struct: type[C], table: str, params: Params, *base: dict[str, Any]) -> C:
    """``struct`` from ``base`` < the file's ``[table]`` < the environment < the flags."""
    file = config_file(params).get(table, {})
    return build(struct, *base, file, env_layer(table), flag_layer(table, params))


def nats_config(params: Params) -> NatsConfig:
    """The NatsConfig from flags, env and the config file's ``[nats]`` table."""
    return load(NatsConfig, "nats", params)


def gateway_config(params: Params) -> GatewayConfig:
    """The GatewayConfig from flags, env and the config file's ``[gateway]`` table."""
    return load(GatewayConfig, "gateway", params)
