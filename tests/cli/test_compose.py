"""compose.yaml (no Docker engine here): every fedgate service runs a real subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedgate.cli import parse

yaml = pytest.importorskip("yaml")  # PyYAML, from the dev extras

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def fedgate_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("build")}


def test_every_fedgate_command_parses(compose: dict[str, Any]) -> None:
    services = fedgate_services(compose)
    roles = [parse(s["command"]).command for s in services.values()]
    assert roles.count("gateway") == 2
    assert roles.count("worker") >= 2


def test_workers_span_two_regions_and_gateways_share_the_queue(compose: dict[str, Any]) -> None:
    parsed = [parse(s["command"]) for s in fedgate_services(compose).values()]
    assert len({a.params["region"] for a in parsed if a.command == "worker"}) == 2
    gateway_ids = [a.params["gateway_id"] for a in parsed if a.command == "gateway"]
    assert len(set(gateway_ids)) == len(gateway_ids)  # distinct ids, one queue group
    assert all(a.params["public_root"] is None for a in parsed)  # same subjects everywhere


def test_nats_has_jetstream_and_services_reach_it(compose: dict[str, Any]) -> None:
    assert "-js" in compose["services"]["nats"]["command"]
    for service in fedgate_services(compose).values():
        assert service["environment"]["FEDGATE_NATS_URL"] == "nats://nats:4222"
        assert "nats" in service["depends_on"]


def test_observability_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one")
    for name in ("otel-collector", "jaeger"):
        assert services[name]["profiles"] == ["observability"]
    for service in fedgate_services(compose).values():
        assert "profiles" not in service
        endpoint = service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint.startswith("http://otel-collector:")


def test_dockerfile_builds_the_cli_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert 'ENTRYPOINT ["fedgate"]' in text
    assert "pip install" in text
