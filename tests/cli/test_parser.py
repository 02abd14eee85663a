"""The command line (click): every subcommand has help with examples; flags map to config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedgate.cli import main, parse

COMMANDS = ["up", "gateway", "worker", "infer", "nodes", "stats", "route", "top", "bench"]


def help_of(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = help_of(command, capsys=capsys)
    assert "examples:" in out
    assert f"fedgate {command}" in out
    assert "--nats URL" in out
    assert "flags > FEDGATE_* environment variables > --config TOML file > defaults" in out
    assert "NATS connection (file table [nats], env FEDGATE_NATS_*):" in out


def test_help_groups_options_and_shows_defaults_units_env_and_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = help_of("gateway", capsys=capsys)
    sections = [line for line in out.splitlines() if line.endswith(":") and not line[0].isspace()]
    assert sections[:3] == [
        "Gateway (file table [gateway], env FEDGATE_GATEWAY_*):",
        "NATS connection (file table [nats], env FEDGATE_NATS_*):",
        "Configuration and logging:",
    ]
    text = " ".join(out.split())  # help wraps: one long line to search
    assert (
        "--request-timeout S Deadline of a request that gives no timeout_ms. [default: 30 s; "
        "0<x<=86400; env FEDGATE_GATEWAY_REQUEST_TIMEOUT_S; key gateway.request_timeout_s]"
    ) in text  # the field's docstring, default and unit, Meta bounds, env var, TOML key
    assert "--decisions / --no-decisions" in out
    assert "--strategy [round_robin|" in out
    worker = help_of("worker", capsys=capsys)
    assert "Synthetic backend:" in worker and "--ttft-ms" in worker  # the registry's own
    assert "--label K=V" in worker and "--model MODEL" in worker


def test_python_dash_m_fedgate_runs_the_cli() -> None:
    for module in ("fedgate", "fedgate.cli"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert "fedgate up" in proc.stdout


def test_usage_errors_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "--max-retries", "99"]) == 2
    assert "Invalid value for '--max-retries': 99 is not in the range 0<=x<=20" in (
        capsys.readouterr().err
    )
    assert main(["nodes", "--no-such-flag"]) == 2
    capsys.readouterr()
    assert main(["infer", "generate", "hi", "--max-tokens", "0"]) == 2  # as the HTTP door: >= 1
    assert "Invalid value for '--max-tokens': 0 is not in the range x>=1" in capsys.readouterr().err
    assert main(["worker", "--label", "no-equals-sign"]) == 2
    assert main([]) == 2  # no command: the help, as a usage error


def test_every_command_takes_nats_auth_options() -> None:
    auth = [
        "--nats", "nats://a:4222,nats://b:4222", "--user", "u", "--password", "p",
        "--token", "t", "--creds", "c.creds", "--nkey", "seed.nk", "--tls-ca", "ca.pem",
        "--tls-cert", "cert.pem", "--tls-key", "key.pem",
    ]  # fmt: skip
    for command in (["nodes"], ["stats"], ["top"], ["route", "generate"], ["gateway"]):
        p = parse([*command, *auth]).params
        assert (p["url"], p["user"], p["creds_file"], p["nkey_seed"], p["tls_key"]) == (
            "nats://a:4222,nats://b:4222", "u", "c.creds", "seed.nk", "key.pem",
        )  # fmt: skip


def test_gateway_maps_http_and_metrics_ports() -> None:
    from fedgate.options import gateway_config

    inv = parse(
        ["gateway", "--http-port", "8080", "--metrics-port", "9464", "--strategy", "round_robin"]
    )
    cfg = gateway_config(inv.params)
    assert (cfg.http_port, cfg.metrics_port, cfg.strategy) == (8080, 9464, "round_robin")
    assert gateway_config(parse(["gateway", "--no-decisions"]).params).decisions is False
    assert gateway_config(parse(["gateway", "--access-log"]).params).access_log is True


def test_worker_takes_the_backend_registry_flags() -> None:
    from fedgate.backends import backend_namespace
    from worker.backends import registry
    from worker.backends.synthetic import SyntheticBackend

    inv = parse(["worker", "--backend", "synthetic", "--ttft-ms", "5", "--hang"])
    assert (inv.params["backend"], inv.params["ttft_ms"], inv.params["hang"]) == (
        "synthetic", 5.0, True,
    )  # fmt: skip
    assert isinstance(registry.create(backend_namespace(inv.params)), SyntheticBackend)
    with pytest.raises(ValueError, match="--upstream"):
        registry.create(backend_namespace(parse(["worker", "--backend", "openai"]).params))


def test_log_level_is_accepted_before_and_after_the_subcommand() -> None:
    assert parse(["worker", "--log-level", "debug"]).params["log_level"] == "debug"
    assert parse(["--log-level", "warning", "worker"]).params["log_level"] == "warning"
    assert (
        parse(["--log-level", "warning", "worker", "--log-level", "error"]).params["log_level"]
        == "error"
    )
    assert parse(["worker"]).params["log_level"] in {"debug", "info", "warning", "error"}


def test_positionals_and_request_flags() -> None:
    inv = parse(["infer", "generate", "hi there", "--stream", "--allowed-region", "eu-west",
                 "--allowed-region", "eu-north", "--tenant", "t1", "--timeout", "5"])  # fmt: skip
    assert inv.command == "infer"
    p = inv.params
    assert (p["capability"], p["text"], p["stream"], p["tenant_id"]) == (
        "generate", "hi there", True, "t1",
    )  # fmt: skip
    assert p["allowed_regions"] == ("eu-west", "eu-north") and p["timeout"] == 5.0
    route = parse(["route", "embed"]).params
    assert (route["capability"], route["text"], route["json"]) == ("embed", "", False)
    assert parse(["bench"]).params["which"] == "all"
    assert parse(["top", "--once", "--tab", "health"]).params["tab"] == "health"


def test_infer_request_id_is_the_requests_and_follows_the_protocols_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedgate.commands import request_fields
    from shared.client import FedClient

    params = parse(["infer", "generate", "hi", "--request-id", "my-req_1", "--tenant", "t"]).params
    request = FedClient.build_request("hi", **request_fields(params))
    assert (request.request_id, request.tenant_id) == ("my-req_1", "t")
    generated = FedClient.build_request(
        "hi", **request_fields(parse(["infer", "generate", "hi"]).params)
    )
    assert generated.request_id and len(generated.request_id) == 16  # none given: generated
    for bad in ("", "a.b", "x" * 129):
        assert main(["infer", "generate", "hi", "--request-id", bad]) == 2
        assert "Invalid value for '--request-id'" in capsys.readouterr().err


def test_up_keeps_its_argv_and_its_supervised_flag() -> None:
    inv = parse(["up", "--workers", "2", "--no-probe"])
    assert inv.argv == ("up", "--workers", "2", "--no-probe")
    p = inv.params
    assert (p["workers"], p["no_probe"], p["supervised"], p["http_port"]) == (2, True, False, 8080)
    assert p["url"] is None  # no --nats: up starts its own server


def test_infer_error_line_says_when_to_retry() -> None:
    from fedgate.commands import error_line
    from shared import errors

    limited = errors.RateLimited("tenant 'acme' is over its requests per minute (3)", 12.2)
    back = errors.from_headers(limited.headers())  # as the CLI gets it: through the headers
    assert back is not None
    assert error_line(back) == (
        "fedgate: 429 rate_limited: tenant 'acme' is over its requests per minute (3)"
        " (retry after 13 s)"
    )
    assert error_line(errors.SloUnmet("no node meets it now", 0.2)).endswith("(retry after 1 s)")
    assert error_line(errors.Overloaded("busy")) == "fedgate: 429 overloaded: busy"
    assert "retry after" not in error_line(errors.PolicyViolation("no"))  # not a RetryAfter


def test_up_banner_curl_carries_the_api_key_the_gateway_wants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedgate.up import _banner, key_tenants

    monkeypatch.delenv("FEDGATE_GATEWAY_API_KEYS", raising=False)
    monkeypatch.delenv("FEDGATE_CONFIG", raising=False)
    config = tmp_path / "keys.toml"
    config.write_text(
        '[gateway.api_keys]\n"sk-a" = "team-a"\n"sk-b" = "team-b"\n"sk-c" = "team-a"\n'
    )
    tenants = key_tenants(parse(["up", "--config", str(config)]).params)
    assert tenants == ["team-a", "team-b"]
    assert key_tenants(parse(["up"]).params) == []
    _banner("nats://127.0.0.1:4222", 8080, tenants=tenants)
    out = capsys.readouterr().out
    assert 'completions -H "Authorization: Bearer $FEDGATE_API_KEY" -H' in out
    assert "export FEDGATE_API_KEY=<one of gateway.api_keys>; their tenants: team-a, team-b" in out
    assert "sk-a" not in out  # the keys themselves are not printed
    _banner("nats://127.0.0.1:4222", 8080)
    assert "Authorization" not in capsys.readouterr().out  # no keys: no header


def test_nodes_latency_cells_say_not_measured_rather_than_zero() -> None:
    from fedgate.tables import latencies

    assert latencies({"latency_p50_ms": 0.0, "latency_p99_ms": 0.0}) == ("–", "–")
    assert latencies({"latency_p50_ms": None, "latency_p99_ms": None}) == ("–", "–")
    assert latencies({"latency_p50_ms": 12.0, "latency_p99_ms": 30.25}) == ("12.0", "30.2")
