"""The one-shot commands against a real federation of ``fedgate`` processes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from shared import messages as m
from tests.cli.canned import DATA, GOLDEN_CASES, canned_gateways
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

        as_json, stream_json = fedgate_all(
            ["infer", "generate", "hi", "--json", "--request-id", "cli-1", "--nats", nats_url],
            ["infer", "generate", "hi", "--json", "--stream", "--max-tokens", "3",
             "--nats", nats_url],
        )  # fmt: skip
        result = json.loads(as_json.stdout)
        assert (result["served_by"], result["request_id"]) == ("w-eu", "cli-1")
        # --json is json.dumps of the Result as it always was: one line, ", " and ": "
        # separators, the Struct's field order
        assert as_json.stdout == json.dumps(result) + "\n"
        assert list(result) == list(m.Result.__struct_fields__)
        chunks = [json.loads(line) for line in stream_json.stdout.splitlines()]
        assert stream_json.stdout == "".join(json.dumps(c) + "\n" for c in chunks)
        assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))

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
        assert not any(line.endswith(" ") for line in nodes.stdout.splitlines())
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


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
async def test_json_output_is_byte_for_byte_what_the_argparse_cli_printed(
    nats_url: str, case: str
) -> None:
    """Replies recorded from real gateways, replayed; stdout compared with the golden file."""
    async with canned_gateways(nats_url, case):
        result = await asyncio.to_thread(fedgate, *GOLDEN_CASES[case], "--nats", nats_url)
    golden = DATA / "golden" / f"{case}"
    assert result.stdout == golden.with_suffix(".out").read_text(), result.stderr
    assert result.returncode == int(golden.with_suffix(".code").read_text())


async def test_tables_of_replayed_replies(nats_url: str) -> None:
    """The rich tables (piped: plain text, no colour) of the recorded replies."""
    outputs = {}
    for case in ("nodes", "stats", "route_restricted", "route_bad"):
        async with canned_gateways(nats_url, case):
            argv = [a for a in GOLDEN_CASES[case] if a != "--json"]
            outputs[case] = await asyncio.to_thread(fedgate, *argv, "--nats", nats_url)
    nodes = outputs["nodes"].stdout.splitlines()
    assert nodes[0].split() == ["GATEWAY", "NODE", "REGION", "MODELS", "CAPABILITIES", "HEALTH",
                                "TTFT", "P50", "MS", "TTFT", "P99", "MS", "TPOT", "MS",
                                "CIRCUIT", "LOAD", "PRIVACY", "HB", "AGE", "MS"]  # fmt: skip
    assert set(nodes[1]) == {"─"}
    assert [line.split()[:3] for line in nodes[2:]] == [
        ["gw-a", "eu-1", "eu-west"], ["gw-a", "us-1", "us-west"], ["gw-a", "emb-1", "us-west"],
        ["gw-b", "eu-1", "eu-west"], ["gw-b", "us-1", "us-west"], ["gw-b", "emb-1", "us-west"],
    ]  # fmt: skip
    # recorded before any request: no latency sample, "–" rather than a fast-looking 0.00
    assert [line.split()[6:9] for line in nodes[2:]] == [["–", "–", "–"]] * 6
    assert "\x1b[" not in outputs["nodes"].stdout  # no colour when piped
    stats = outputs["stats"].stdout.splitlines()
    assert stats[0].split()[:3] == ["GATEWAY", "TOTAL", "OK"]
    assert [line.split()[0] for line in stats[2:]] == ["gw-a", "gw-b"]
    route = outputs["route_restricted"].stdout
    assert route.count("chosen none") == 2
    assert "rejected: privacy: node serves up to confidential, request needs restricted" in route
    bad = outputs["route_bad"]
    assert bad.returncode == 1
    assert bad.stdout.count("gateway: bad_request: invalid request: JSON is malformed") == 2
