"""The one-shot commands against a real federation of ``fedgate`` processes."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.util import fedgate, fedgate_all, wait_for_nodes
from tests.helpers import Proc, processes

PANELS = ("MODEL CATALOG", "NODE HEALTH", "ROUTING DECISIONS", "CIRCUIT BREAKERS",
          "GATEWAY STATS", "ACTIVE POLICIES")  # fmt: skip


def start(procs: list[Proc], url: str) -> None:
    procs.append(Proc("gateway", "--nats", url, "--gateway-id", "gw-a"))
    procs.append(
        Proc("worker", "--nats", url, "--node-id", "w-eu", "--region", "eu-west",
             "--model", "m1", "--capability", "generate", "--heartbeat-interval", "0.2")
    )  # fmt: skip


async def test_worker_gateway_infer_round_trip(nats_url: str) -> None:
    with processes() as procs:
        start(procs, nats_url)
        await wait_for_nodes(nats_url, "w-eu")

        plain = fedgate("infer", "generate", "hello", "--nats", nats_url, "--max-tokens", "5")
        assert plain.returncode == 0, plain.stderr
        assert len(plain.stdout.split()) == 5
        assert "served by w-eu (eu-west)" in plain.stderr

        streamed = fedgate(
            "infer", "generate", "hello", "--stream", "--nats", nats_url, "--max-tokens", "4",
            "--tenant", "t1", "--privacy", "internal", "--region", "eu-west", "--timeout", "10",
        )  # fmt: skip
        assert streamed.returncode == 0, streamed.stderr
        assert len(streamed.stdout.split()) == 4
        assert "served by w-eu, 4 tokens" in streamed.stderr

        as_json = fedgate("infer", "generate", "hi", "--json", "--nats", nats_url)
        assert json.loads(as_json.stdout)["served_by"] == "w-eu"

        refused = fedgate("infer", "generate", "x", "--privacy", "restricted", "--nats", nats_url)
        assert refused.returncode == 1
        assert "policy_violation" in refused.stderr


async def test_nodes_stats_route_and_top_once(nats_url: str) -> None:
    with processes() as procs:
        start(procs, nats_url)
        await wait_for_nodes(nats_url, "w-eu")
        assert fedgate("infer", "generate", "warm up", "--nats", nats_url).returncode == 0

        nats = ["--nats", nats_url]
        nodes, nodes_json, stats, stats_json, route, route_json, top = fedgate_all(
            ["nodes", *nats],
            ["nodes", "--json", *nats],
            ["stats", *nats],
            ["stats", "--json", *nats],
            ["route", "generate", "hi", "--privacy", "restricted", *nats],
            ["route", "generate", "--json", *nats],
            ["top", "--once", *nats],
        )
        for result in (nodes, nodes_json, stats, stats_json, route, route_json, top):
            assert result.returncode == 0, (result.args, result.stderr)

        assert nodes.stdout.splitlines()[0].split()[:3] == ["GATEWAY", "NODE", "REGION"]
        assert "w-eu" in nodes.stdout and "gw-a" in nodes.stdout
        assert [n["node_id"] for r in json.loads(nodes_json.stdout) for n in r["nodes"]] == ["w-eu"]

        assert "TOTAL" in stats.stdout and "gw-a" in stats.stdout
        (gw_stats,) = json.loads(stats_json.stdout)
        assert gw_stats["gateway"] == "gw-a" and gw_stats["successful_requests"] >= 1

        assert "chosen none" in route.stdout and "rejected: " in route.stdout
        assert json.loads(route_json.stdout)[0]["chosen"] == "w-eu"

        assert "Federation Gateway v1.0 │ " in top.stdout
        for panel in PANELS:
            assert panel in top.stdout
        assert "w-eu" in top.stdout


def test_no_gateway_is_reported_and_fails(nats_url: str) -> None:
    result = fedgate("nodes", "--nats", nats_url)
    assert result.returncode == 1
    assert "no gateway answered" in result.stderr


@pytest.mark.parametrize("command", [["nodes"], ["infer", "generate", "hi"], ["top", "--once"]])
def test_unreachable_nats_fails_fast_with_one_line(command: list[str]) -> None:
    started = time.monotonic()
    result = fedgate(*command, "--nats", "nats://127.0.0.1:1")
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert result.stderr.startswith(
        "fedgate: error: cannot connect to NATS at nats://127.0.0.1:1"
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
