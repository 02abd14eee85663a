"""Command-line options generated from the config Structs: one ``Setting`` per field.

Imports no gateway or worker module.

One definition per setting. A field of ``NatsConfig``, ``GatewayConfig`` or
``WorkerConfig`` (``shared/config.py``) gives

- its TOML key: ``request_timeout_s`` in the file's ``[gateway]`` table;
- its environment variable: ``FEDGATE_GATEWAY_REQUEST_TIMEOUT_S``;
- its flag: the key with dashes, less a seconds suffix (``--request-timeout``), unless
  ``RENAMED`` keeps an older name (``url`` is ``--nats``, ``models`` is ``--model``);
- its type, bounds (``Meta(gt=0, le=86_400)`` shows as ``0<x<=86400``), default, unit;
- its help text: the field's docstring (``HELP`` for the fields that have none).

A flag that is not given is ``None`` (or empty), so the lower layers show through when
the configs are built (``fedgate.options``). The hand-written tables (``RENAMED``,
``HELP``, ...) are in ``fedgate.optionspec``; ``fedgate.options`` re-exports this module.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import itertools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import msgspec
import msgspec.inspect as mi

from fedgate.help import Option
from fedgate.optionspec import (
    CHOICES,
    FILE_ONLY,
    GROUPS,
    HELP,
    METAVARS,
    RENAMED,
    SHOWN_DEFAULTS,
    TABLES,
    UNITS,
)
from shared.config import Config

F = TypeVar("F", bound=Callable[..., Any])


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
            return pair(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def pair(text: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``("KEY", "VALUE")`` (stripped); raises ValueError."""
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
        ftype = without_none(field.type)
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
    for suffix, unit, metavar in UNITS:
        if key.endswith(suffix):
            return unit, metavar
    return "", None


def _strip_seconds(key: str) -> str:
    return key.removesuffix("_s")


def without_none(t: mi.Type) -> mi.Type:
    """``X | None`` -> ``X`` (other types unchanged)."""
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
