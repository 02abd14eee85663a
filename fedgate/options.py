"""Command-line options generated from the config Structs, and the configs they build.

Imports no gateway or worker module (the dashboard builds its NatsConfig here).

The options themselves (one ``Setting`` per config field: flag, environment variable,
TOML key, type, help) are generated in ``fedgate.settings`` from the Structs and the
hand-written tables of ``fedgate.optionspec``; both are re-exported here. This module
builds the configs: a flag that is not given is ``None`` (or empty), so the lower layers
show through when the Struct is built by ``shared.config.build``: flags > ``FEDGATE_*``
environment > the ``--config`` file > defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec.inspect as mi

from fedgate.optionspec import (
    CHOICES,
    FILE_ONLY,
    GROUPS,
    HELP,
    METAVARS,
    RENAMED,
    SHOWN_DEFAULTS,
    TABLES,
)
from fedgate.settings import (
    KeyValue,
    Kind,
    Setting,
    config_options,
    field_docs,
    pair,
    settings,
    without_none,
)
from shared.config import Config, GatewayConfig, NatsConfig, build, env_values, load_file

__all__ = [
    "CHOICES",
    "FILE_ONLY",
    "GROUPS",
    "HELP",
    "METAVARS",
    "RENAMED",
    "SHOWN_DEFAULTS",
    "TABLES",
    "Invocation",
    "KeyValue",
    "Kind",
    "Params",
    "Setting",
    "config_file",
    "config_options",
    "env_layer",
    "field_docs",
    "flag_layer",
    "gateway_config",
    "load",
    "nats_config",
    "settings",
]

Params = Mapping[str, Any]
"""A command's parameters as click parsed them (the config flags not given are None)."""

C = TypeVar("C", bound=Config)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One parsed command line: the command, its parameters, the words it came from."""

    command: str
    params: Params
    argv: tuple[str, ...] = ()


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
        ftype = without_none(field.type)
        items = [x.strip() for x in env[field.name].split(",") if x.strip()]
        if isinstance(ftype, mi.VarTupleType | mi.ListType):
            env[field.name] = tuple(items)
        elif isinstance(ftype, mi.DictType):
            env[field.name] = dict(pair(x) for x in items)
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
