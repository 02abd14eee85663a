"""Options generated from the config Structs: one source for flag, env var, key and help."""

from __future__ import annotations

import pytest

from fedgate.cli import parse
from fedgate.options import FILE_ONLY, TABLES, Kind, field_docs, settings

# Every flag the argparse CLI had, per command, with a value where it took one: they must
# all keep working (compose.yaml, the docs, scripts and the tests' processes use them).
LEGACY: dict[str, list[tuple[str, str | None]]] = {
    "nats": [("--nats", "nats://x:1"), ("--user", "u"), ("--password", "p"), ("--token", "t"),
             ("--creds", "c"), ("--nkey", "k"), ("--tls-ca", "a"), ("--tls-cert", "b"),
             ("--tls-key", "c"), ("--inbox-prefix", "_I"), ("--connect-timeout", "2"),
             ("--config", "f.toml"), ("--log-level", "debug"), ("-h", None)],
    "gateway": [("--gateway-id", "g"), ("--max-retries", "2"), ("--request-timeout", "5"),
                ("--first-chunk-timeout", "3"), ("--stall-timeout", "1"), ("--max-queue", "9"),
                ("--strategy", "round_robin"), ("--no-decisions", None), ("--access-log", None),
                ("--http-port", "80"), ("--http-host", "0.0.0.0"), ("--metrics-port", "90"),
                ("--public-root", "i"), ("--internal-root", "f")],
    "worker": [("--node-id", "n"), ("--region", "r"), ("--model", "m"), ("--capability", "c"),
               ("--capacity", "2"), ("--privacy", "public"), ("--cost", "0.3"), ("--gpu", None),
               ("--label", "k=v"), ("--heartbeat-interval", "0.2"), ("--drain-timeout", "1"),
               ("--stream-interval-ms", "5"), ("--public-root", "i"), ("--internal-root", "f"),
               ("--backend", "llama"), ("--ttft-ms", "1"), ("--token-interval-ms", "1"),
               ("--fail-rate", "0.1"), ("--fail-after-tokens", "3"), ("--hang", None),
               ("--default-max-tokens", "9"), ("--plain-as-chat", None), ("--upstream", "u"),
               ("--upstream-model", "m"), ("--api-key-env", "K"), ("--upstream-timeout", "9"),
               ("--model-path", "p"), ("--n-ctx", "9"), ("--n-threads", "2")],
    "up": [("--workers", "2"), ("--no-probe", None), ("--state-dir", "d"),
           ("--http-port", "0"), ("--llm", None), ("--supervised", None)],
    "infer generate hi": [("--model", "m"), ("--tenant", "t"), ("--privacy", "restricted"),
                          ("--region", "r"), ("--allowed-region", "a"), ("--max-tokens", "3"),
                          ("--seed", "1"), ("--timeout", "2"), ("--stream", None),
                          ("--json", None)],
    "route generate": [("--model", "m"), ("--region", "r"), ("--json", None)],
    "nodes": [("--json", None)],
    "stats": [("--json", None)],
    "top": [("--once", None), ("--interval", "0.5"), ("--tab", "policies")],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(LEGACY))
def test_every_flag_of_the_argparse_cli_still_parses(command: str) -> None:
    flags = LEGACY[command] + (LEGACY["nats"] if command != "nats" else [])
    words = command.split() if command != "nats" else ["nodes"]
    for flag, value in flags:
        if flag == "-h":
            continue
        inv = parse([*words, flag, *([value] if value is not None else [])])
        assert inv.command == words[0]


def test_every_struct_field_has_a_flag_env_var_and_help() -> None:
    for table, struct in TABLES.items():
        fields = [f for f in struct.__struct_fields__ if (table, f) not in FILE_ONLY]
        by_key = {s.key: s for s in settings(table)}
        assert list(by_key) == fields, table
        for s in by_key.values():
            assert s.env == f"FEDGATE_{table}_{s.key}".upper()
            assert s.help, f"{table}.{s.key} has no help text"
            assert s.flag.startswith("--")


def test_docstrings_are_the_help_and_units_come_from_the_key() -> None:
    from shared.config import GatewayConfig

    docs = field_docs(GatewayConfig)
    assert docs["stall_timeout_s"] == (
        "Longest silence between two chunks before the gateway fails over."
    )
    by_key = {s.key: s for s in settings("gateway")}
    stall = by_key["stall_timeout_s"]
    assert (stall.flag, stall.metavar, stall.default) == ("--stall-timeout", "S", "2 s")
    assert by_key["max_payload_bytes"].metavar == "BYTES"
    assert by_key["decisions"].kind is Kind.SWITCH
    assert {s.key: s.kind for s in settings("worker")}["labels"] is Kind.MAP


def test_bounds_of_the_structs_are_enforced_at_parse_time() -> None:
    import click

    with pytest.raises(click.BadParameter, match="0<x<=86400"):
        parse(["gateway", "--stall-timeout", "0"])
    with pytest.raises(click.BadParameter, match="0<=x<=1"):
        parse(["worker", "--cost", "1.5"])
    with pytest.raises(click.BadParameter):
        parse(["gateway", "--strategy", "fastest"])


def test_flags_do_not_collide_within_a_command() -> None:
    for tables in (("nats", "gateway"), ("nats", "worker")):
        keys = [s.key for t in tables for s in settings(t)]
        flags = [s.flag for t in tables for s in settings(t)]
        assert len(set(keys)) == len(keys) and len(set(flags)) == len(flags)
