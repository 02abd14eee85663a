"""The hand-written part of the command-line options: what the config Structs don't say.

Which Struct each TOML table fills (``TABLES``), the ``--help`` section of each table
(``GROUPS``), the flags that keep an older name (``RENAMED``), metavars, help of the fields
with no docstring (``HELP``), defaults shown as words, ``str`` choices, the settings with
no flag (``FILE_ONLY``) and the unit suffixes of keys (``UNITS``: ``_ms``, ``_s``,
``_bytes``). Keys are ``(table, field)`` pairs. ``fedgate.settings`` reads them;
``fedgate.options`` re-exports them.
"""

from __future__ import annotations

from shared.config import Config, GatewayConfig, NatsConfig, WorkerConfig
from shared.messages import Privacy

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

CHOICES = {
    ("worker", "privacy"): tuple(p.value for p in Privacy),
    ("gateway", "limits_store"): ("kv", "local"),
}
"""Allowed values of ``str`` fields (the gateway's strategies come from ``fedgate.cli``)."""

FILE_ONLY = frozenset({("gateway", "api_keys"), ("gateway", "tenant_limits")})
"""Settings with no flag: secrets, and tables that belong in a file."""

UNITS = (("_ms", "ms", "MS"), ("_s", "s", "S"), ("_bytes", "bytes", "BYTES"))
"""Key suffix, unit shown after the default, metavar."""
