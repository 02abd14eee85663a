"""Configuration precedence: flags > FEDGATE_* env > TOML file (--config) > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgate.cli import make_parser, nats_config
from fedgate.commands import gateway_config, worker_config

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


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return make_parser().parse_args(list(argv))


def test_defaults_without_file_env_or_flags(config: str) -> None:
    assert nats_config(parse("nodes")).url == "nats://127.0.0.1:4222"
    assert worker_config(parse("worker")).region == "default"


def test_file_beats_defaults(config: str) -> None:
    cfg = nats_config(parse("nodes", "--config", config))
    assert (cfg.url, cfg.user) == ("nats://file:4222", "file-user")
    w = worker_config(parse("worker", "--config", config))
    assert (w.node_id, w.region, w.models, w.capacity) == (
        "file-node",
        "file-region",
        ("m-file",),
        3,
    )
    g = gateway_config(parse("gateway", "--config", config))
    assert (g.max_retries, g.strategy, g.metrics_port) == (5, "round_robin", 9000)


def test_config_file_from_the_environment(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_CONFIG", config)
    assert nats_config(parse("stats")).url == "nats://file:4222"


def test_env_beats_file(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_NATS_URL", "nats://env:4222")
    monkeypatch.setenv("FEDGATE_WORKER_REGION", "env-region")
    monkeypatch.setenv("FEDGATE_WORKER_MODELS", "m1, m2")
    monkeypatch.setenv("FEDGATE_GATEWAY_MAX_RETRIES", "7")
    cfg = nats_config(parse("nodes", "--config", config))
    assert (cfg.url, cfg.user) == ("nats://env:4222", "file-user")
    w = worker_config(parse("worker", "--config", config))
    assert (w.region, w.models, w.capacity) == ("env-region", ("m1", "m2"), 3)
    assert gateway_config(parse("gateway", "--config", config)).max_retries == 7


def test_flags_beat_env_and_file(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_NATS_URL", "nats://env:4222")
    monkeypatch.setenv("FEDGATE_WORKER_REGION", "env-region")
    monkeypatch.setenv("FEDGATE_GATEWAY_MAX_RETRIES", "7")
    cfg = nats_config(parse("nodes", "--config", config, "--nats", "nats://flag:4222"))
    assert cfg.url == "nats://flag:4222"
    w = worker_config(
        parse("worker", "--config", config, "--region", "flag-region", "--model", "a",
              "--model", "b", "--label", "rack=r1")
    )  # fmt: skip
    assert (w.region, w.models, w.labels) == ("flag-region", ("a", "b"), {"rack": "r1"})
    g = gateway_config(parse("gateway", "--config", config, "--max-retries", "1"))
    assert g.max_retries == 1


def test_a_typo_in_the_file_is_an_error(tmp_path: Path, config: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[worker]\nregoin = "x"\n')
    with pytest.raises(ValueError, match="regoin"):
        worker_config(parse("worker", "--config", str(bad)))


def test_the_shipped_example_config_is_valid(config: str) -> None:
    example = str(Path(__file__).parents[2] / "deploy" / "fedgate.example.toml")
    assert nats_config(parse("nodes", "--config", example)).url == "nats://127.0.0.1:4222"
    assert gateway_config(parse("gateway", "--config", example)).max_retries == 3
    assert worker_config(parse("worker", "--config", example)).labels == {"rack": "a1"}
