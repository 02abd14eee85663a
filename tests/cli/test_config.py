"""Configuration precedence: flags > FEDGATE_* env > TOML file (--config) > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgate.cli import parse
from fedgate.commands import worker_config
from fedgate.options import Params, gateway_config, nats_config

FILE = """
[nats]
url = "nats://file:4222"
user = "file-user"

[gateway]
max_retries = 5
strategy = "round_robin"
metrics_port = 9000

[worker]
node_id = "file-node"
region = "file-region"
models = ["m-file"]
capacity = 3
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for key in (
        "FEDGATE_CONFIG", "FEDGATE_NATS_URL", "FEDGATE_NATS_USER", "FEDGATE_WORKER_REGION",
        "FEDGATE_WORKER_MODELS", "FEDGATE_WORKER_CAPACITY", "FEDGATE_GATEWAY_MAX_RETRIES",
    ):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    path = tmp_path / "fedgate.toml"
    path.write_text(FILE)
    return str(path)


def params(*argv: str) -> Params:
    return parse(argv).params


def test_defaults_without_file_env_or_flags(config: str) -> None:
    assert nats_config(params("nodes")).url == "nats://127.0.0.1:4222"
    assert worker_config(params("worker")).region == "default"


def test_file_beats_defaults(config: str) -> None:
    cfg = nats_config(params("nodes", "--config", config))
    assert (cfg.url, cfg.user) == ("nats://file:4222", "file-user")
    w = worker_config(params("worker", "--config", config))
    assert (w.node_id, w.region, w.models, w.capacity) == (
        "file-node",
        "file-region",
        ("m-file",),
        3,
    )
    g = gateway_config(params("gateway", "--config", config))
    assert (g.max_retries, g.strategy, g.metrics_port) == (5, "round_robin", 9000)


def test_config_file_from_the_environment(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_CONFIG", config)
    assert nats_config(params("stats")).url == "nats://file:4222"


def test_env_beats_file(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_NATS_URL", "nats://env:4222")
    monkeypatch.setenv("FEDGATE_WORKER_REGION", "env-region")
    monkeypatch.setenv("FEDGATE_WORKER_MODELS", "m1, m2")
    monkeypatch.setenv("FEDGATE_GATEWAY_MAX_RETRIES", "7")
    cfg = nats_config(params("nodes", "--config", config))
    assert (cfg.url, cfg.user) == ("nats://env:4222", "file-user")
    w = worker_config(params("worker", "--config", config))
    assert (w.region, w.models, w.capacity) == ("env-region", ("m1", "m2"), 3)
    assert gateway_config(params("gateway", "--config", config)).max_retries == 7


def test_flags_beat_env_and_file(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_NATS_URL", "nats://env:4222")
    monkeypatch.setenv("FEDGATE_WORKER_REGION", "env-region")
    monkeypatch.setenv("FEDGATE_GATEWAY_MAX_RETRIES", "7")
    cfg = nats_config(params("nodes", "--config", config, "--nats", "nats://flag:4222"))
    assert cfg.url == "nats://flag:4222"
    w = worker_config(
        params("worker", "--config", config, "--region", "flag-region", "--model", "a",
              "--model", "b", "--label", "rack=r1")
    )  # fmt: skip
    assert (w.region, w.models, w.labels) == ("flag-region", ("a", "b"), {"rack": "r1"})
    g = gateway_config(params("gateway", "--config", config, "--max-retries", "1"))
    assert g.max_retries == 1


def test_a_typo_in_the_file_is_an_error(tmp_path: Path, config: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[worker]\nregoin = "x"\n')
    with pytest.raises(ValueError, match="regoin"):
        worker_config(params("worker", "--config", str(bad)))


def test_the_shipped_example_config_is_valid(config: str) -> None:
    example = str(Path(__file__).parents[2] / "deploy" / "fedgate.example.toml")
    assert nats_config(params("nodes", "--config", example)).url == "nats://127.0.0.1:4222"
    assert gateway_config(params("gateway", "--config", example)).max_retries == 3
    assert worker_config(params("worker", "--config", example)).labels == {"rack": "a1"}


def test_lists_maps_and_switches_from_the_environment(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGATE_WORKER_LABELS", "rack=r9, zone=2")
    monkeypatch.setenv("FEDGATE_WORKER_CAPABILITIES", "generate,code")
    monkeypatch.setenv("FEDGATE_WORKER_GPU", "true")
    monkeypatch.setenv("FEDGATE_GATEWAY_DECISIONS", "false")
    w = worker_config(params("worker"))
    assert (w.labels, w.capabilities, w.gpu) == (
        {"rack": "r9", "zone": "2"},
        ("generate", "code"),
        True,
    )
    assert gateway_config(params("gateway")).decisions is False
    assert gateway_config(params("gateway", "--decisions")).decisions is True  # flag > env
    assert worker_config(params("worker", "--no-gpu")).gpu is False


def test_new_flags_come_with_the_struct_fields(config: str) -> None:
    g = gateway_config(
        params("gateway", "--breaker-failure-threshold", "9", "--liveness-probe", "0.5",
               "--max-payload-bytes", "4096", "--health-degraded-latency", "2")
    )  # fmt: skip
    assert (g.breaker_failure_threshold, g.liveness_probe_s, g.max_payload_bytes) == (9, 0.5, 4096)
    assert g.health_degraded_latency_s == 2.0
    assert nats_config(params("nodes", "--connection-name", "ops")).name == "ops"
