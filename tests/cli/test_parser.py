"""The argument parser: every subcommand has help with examples; flags map to config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedgate.cli import make_parser

COMMANDS = ["up", "gateway", "worker", "infer", "nodes", "stats", "route", "top", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"fedgate {command}" in out
    assert "--nats URL" in out
    assert "flags > FEDGATE_* environment variables > --config TOML file > defaults" in out


def test_python_dash_m_fedgate_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedgate", "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "fedgate up" in proc.stdout


def test_every_command_takes_nats_auth_options() -> None:
    auth = [
        "--nats", "nats://a:4222,nats://b:4222", "--user", "u", "--password", "p",
        "--token", "t", "--creds", "c.creds", "--nkey", "seed.nk", "--tls-ca", "ca.pem",
        "--tls-cert", "cert.pem", "--tls-key", "key.pem",
    ]  # fmt: skip
    for command in (["nodes"], ["stats"], ["top"], ["route", "generate"], ["gateway"]):
        args = make_parser().parse_args([*command, *auth])
        assert (args.url, args.user, args.creds_file, args.nkey_seed, args.tls_key) == (
            "nats://a:4222,nats://b:4222", "u", "c.creds", "seed.nk", "key.pem",
        )  # fmt: skip


def test_gateway_maps_http_and_metrics_ports() -> None:
    from fedgate.commands import gateway_config

    args = make_parser().parse_args(
        ["gateway", "--http-port", "8080", "--metrics-port", "9464", "--strategy", "round_robin"]
    )
    cfg = gateway_config(args)
    assert (cfg.http_port, cfg.metrics_port, cfg.strategy) == (8080, 9464, "round_robin")


def test_worker_takes_the_backend_registry_flags() -> None:
    args = make_parser().parse_args(["worker", "--backend", "synthetic", "--ttft-ms", "5"])
    assert args.backend == "synthetic"
    assert args.ttft_ms == 5.0


def test_log_level_is_accepted_after_the_subcommand() -> None:
    args = make_parser().parse_args(["worker", "--log-level", "debug"])
    assert args.log_level == "debug"
    assert make_parser().parse_args(["worker"]).log_level in {"debug", "info", "warning", "error"}
