"""Read models: what inspection and metrics see of a gateway (shared/messages.py Structs,
built by gateway/views.py), and that neither needs the service."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from shared import messages as m
from tests.cli.canned import REPLIES
from tests.gateway.conftest import Gateway

DECODERS = {
    "nodes": m.nodes_reply_decoder,
    "stats": m.stats_reply_decoder,
    "route": m.route_reply_decoder,
    "route_restricted": m.route_reply_decoder,
    "route_unknown": m.route_reply_decoder,
}


@pytest.mark.parametrize("case", sorted(DECODERS))
def test_recorded_replies_decode_and_encode_back_byte_for_byte(case: str) -> None:
    """Replies recorded from real gateways before the read models existed."""
    for reply in REPLIES[case]["replies"]:
        data = reply["data"].encode()
        assert m.encode(DECODERS[case].decode(data)) == data


async def ask(gw: Gateway, subject: str, data: bytes = b"") -> bytes:
    await gw.nc.deliver(subject, data, reply="_INBOX.inspect")
    return gw.nc.sent("_INBOX.inspect")[-1].data


async def test_a_gateway_answers_with_its_read_models(gw: Gateway) -> None:
    await gw.node("n1", cost=0.1)
    await gw.ask({"input": "hi"})
    nodes = m.nodes_reply_decoder.decode(await ask(gw, "fed.gateway.nodes"))
    assert nodes.gateway == "gw-test"
    (n1,) = nodes.nodes
    assert (n1.node_id, n1.in_flight, n1.circuit, n1.incarnation) == ("n1", 1, "closed", "n1-1")
    assert n1.models == [m.ModelInfo(model="m", capabilities=("embed", "generate"))]
    stats = m.stats_reply_decoder.decode(await ask(gw, "fed.gateway.stats"))
    assert (stats.gateway, stats.total_requests, stats.in_flight, stats.nodes) == (
        "gw-test", 1, 1, 1,
    )  # fmt: skip
    assert stats.strategy == "least_latency" and stats.policies
    route = m.route_reply_decoder.decode(await ask(gw, "fed.gateway.route.generate", b"{}"))
    assert route.chosen == "n1" and route.candidates[0].eligible
    assert await ask(gw, "fed.gateway.route.generate", b"[") == b""
    error = gw.nc.sent("_INBOX.inspect")[-1].headers or {}
    assert error["Nats-Service-Error-Code"] == "400"


def test_metrics_read_only_read_models() -> None:
    load = m.GatewayLoad(in_flight=2, queued=1, retries=3, failovers=4)
    fleet = m.NodesReply(
        gateway="g",
        nodes=[
            m.NodeView(node_id="n1", health="degraded", circuit="open", incarnation="i",
                       heartbeat_age_ms=1500.0),
            m.NodeView(node_id="static", health="healthy"),  # registered through the API
        ],
    )  # fmt: skip
    metrics = GatewayMetrics("g", load=lambda: load, fleet=lambda: fleet)
    metrics.finished("generate", "m", "n1", "ok", 0.2, 0.05, 7)
    values = {
        (s.name, s.labels.get("node", "")): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert values[("fedgate_in_flight", "")] == 2 and values[("fedgate_queued", "")] == 1
    assert values[("fedgate_retries_total", "")] == 3
    assert values[("fedgate_failovers_total", "")] == 4
    assert values[("fedgate_circuit_state", "n1")] == 2
    assert values[("fedgate_node_health", "n1")] == 2
    assert values[("fedgate_heartbeat_age_seconds", "n1")] == 1.5
    assert ("fedgate_heartbeat_age_seconds", "static") not in values
    assert values[("fedgate_tokens_total", "n1")] == 7


def test_inspection_and_metrics_do_not_import_the_service() -> None:
    """The old cycle service <-> control <-> metrics is gone."""
    code = (
        "import sys, gateway.control, gateway.metrics, gateway.views, gateway.engine;"
        "sys.exit('gateway.service' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
