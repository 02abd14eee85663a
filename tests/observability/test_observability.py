"""Tracing across processes' hops, Prometheus metrics, decisions, explanation headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.client import FedClient
from tests.helpers import eventually, federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions

MODELS = {"m": ("generate",)}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.setup("fedgate-test", exporter=exporter)
    try:
        yield exporter
    finally:
        telemetry.enabled = False  # tracing off again for the rest of the suite
        exporter.clear()


async def test_one_trace_across_client_gateway_attempt_worker(
    nats_url: str, spans: InMemorySpanExporter
) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway()
        await fed.node("w1", models=MODELS)
        await fed.seen("w1")
        client = FedClient(await fed.client())
        result = await client.infer("generate", "trace me")
        assert result.served_by == "w1"

        def trace_done() -> bool:
            names = {s.name for s in spans.get_finished_spans()}
            return {"send infer", "process infer", "route"} <= names and len(
                [s for s in spans.get_finished_spans() if s.name == "process infer"]
            ) >= 2

        await eventually(trace_done, 5, "spans exported")
        finished = spans.get_finished_spans()
        root = next(s for s in finished if s.name == "send infer" and s.parent is None)
        trace_spans = [s for s in finished if s.context.trace_id == root.context.trace_id]
        by_id = {s.context.span_id: s for s in trace_spans}
        gateway_span = next(
            s
            for s in trace_spans
            if s.name == "process infer" and s.attributes.get("fed.gateway") == gw.gateway_id
        )
        attempt = next(s for s in trace_spans if s.name == "send infer" and s.parent is not None)
        worker_span = next(
            s
            for s in trace_spans
            if s.name == "process infer"
            and s.attributes.get("fed.node_id") == "w1"
            and "fed.gateway" not in s.attributes
        )
        route = next(s for s in trace_spans if s.name == "route")
        # client -> gateway -> attempt -> worker, and route under the gateway span
        assert gateway_span.parent.span_id == root.context.span_id
        assert attempt.parent.span_id == gateway_span.context.span_id
        assert worker_span.parent.span_id == attempt.context.span_id
        assert route.parent.span_id == gateway_span.context.span_id
        assert attempt.attributes["messaging.system"] == "nats"
        assert attempt.attributes["messaging.destination.name"] == "fed.node.w1.infer"
        assert attempt.attributes["fed.node_id"] == "w1"
        assert attempt.attributes["fed.attempt"] == 1
        assert worker_span.attributes["fed.tokens"] == 10
        assert gateway_span.attributes["fed.tokens"] == 10
        assert route.attributes["fed.node_id"] == "w1"
        assert all(s.context.trace_id == root.context.trace_id for s in by_id.values())


async def test_failover_shows_two_attempt_spans(nats_url: str, spans: InMemorySpanExporter) -> None:
    async with federation(nats_url) as fed:
        # least_latency is deterministic: with no latency yet, the cheap node is tried first
        # (power_of_two, the default, may pick either, which made this test flaky).
        await fed.gateway(retry_backoff_initial_s=0.001, strategy="least_latency")
        # The cheap node is preferred and always fails; the dear one answers.
        await fed.node(
            "bad", SyntheticBackend(SyntheticOptions(fail_rate=1.0)), models=MODELS, cost=0.0
        )
        await fed.node("good", models=MODELS, cost=1.0)
        await fed.seen("bad", "good")
        client = FedClient(await fed.client())
        result = await client.infer("generate", "retry me")
        assert result.served_by == "good" and result.attempts == 2
        await eventually(
            lambda: (
                len(
                    [
                        s
                        for s in spans.get_finished_spans()
                        if s.name == "send infer" and s.parent is not None
                    ]
                )
                >= 2
            ),
            5,
        )
        attempts = [
            s for s in spans.get_finished_spans() if s.name == "send infer" and s.parent is not None
        ]
        assert sorted(s.attributes["fed.attempt"] for s in attempts) == [1, 2]
        assert {s.attributes["fed.node_id"] for s in attempts} == {"bad", "good"}
        assert len({s.context.trace_id for s in attempts}) == 1
        failed = next(s for s in attempts if s.attributes["fed.node_id"] == "bad")
        assert not failed.status.is_ok


async def _scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def _value(text: str, family: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_prometheus_endpoint_counts_traffic(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway(metrics_port=0)
        assert gw.metrics_port
        await fed.node("w1", models=MODELS)
        await fed.seen("w1")
        before = await _scrape(gw.metrics_port)
        assert _value(before, "fedgate_requests_total") == 0
        client = FedClient(await fed.client())
        for _ in range(3):
            await client.infer("generate", "count me")
        async with client.stream("generate", "stream me") as stream:
            async for _chunk in stream:
                pass
        with pytest.raises(errors.NoCapacity):
            await client.infer("nothing-serves-this", "x")
        after = await _scrape(gw.metrics_port)
        assert _value(after, "fedgate_requests_total", outcome="ok", node="w1") == 4
        assert _value(after, "fedgate_requests_total", outcome="no_capacity") == 1
        assert _value(after, "fedgate_tokens_total") == 40
        assert _value(after, "fedgate_request_duration_seconds_count") == 5
        assert _value(after, "fedgate_node_health", node="w1") == 1  # healthy
        assert _value(after, "fedgate_circuit_state", node="w1") == 0  # closed
        assert "fedgate_heartbeat_age_seconds" in after


async def test_a_results_ttft_is_its_first_token_not_the_whole_answer(nats_url: str) -> None:
    """A non-streaming result carries the node's TTFT: the TTFT histogram and the health
    checker count the time to the first token, not the whole answer (decode included)."""
    async with federation(nats_url) as fed:
        gw = await fed.gateway(metrics_port=0)
        slow_decode = SyntheticBackend(SyntheticOptions(ttft_ms=5, token_interval_ms=40))
        await fed.node("w1", slow_decode, models=MODELS)
        await fed.seen("w1")
        client = FedClient(await fed.client())
        result = await client.infer("generate", "decode slowly", params={"max_tokens": 10})
        assert result.result.tokens == 10 and result.result.ttft_ms is not None
        text = await _scrape(gw.metrics_port)
        assert _value(text, "fedgate_ttft_seconds_count", node="w1") == 1
        ttft = _value(text, "fedgate_ttft_seconds_sum", node="w1")
        whole = _value(text, "fedgate_request_duration_seconds_sum", outcome="ok")
        assert whole >= 0.35  # 9 gaps of 40 ms
        assert ttft < whole - 0.3, (ttft, whole)  # the decode phase is not in it
        health = gw.health.get_cached_health("w1")
        assert health is not None and health.measured and health.latency_p50_ms < 1000 * ttft + 1
        (view,) = gw.views.nodes().nodes  # `fedgate nodes`: TTFT and TPOT apart
        assert view.latency_p50_ms == health.latency_p50_ms
        assert isinstance(view.tpot_p50_ms, float) and 30.0 <= view.tpot_p50_ms < 400.0


async def test_decisions_published_and_decodable(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway()
        await fed.node("w1", models=MODELS)
        await fed.seen("w1")
        nc = await fed.client()
        got: asyncio.Queue[m.Decision] = asyncio.Queue()

        async def on_decision(msg) -> None:  # type: ignore[no-untyped-def]
            got.put_nowait(m.decision_decoder.decode(msg.data))

        await nc.subscribe("fed.decisions", cb=on_decision)
        await nc.flush()
        result = await FedClient(nc).infer("generate", "decide", request_id="dec-1")
        decision = await asyncio.wait_for(got.get(), 5)
        assert decision.request_id == "dec-1"
        assert decision.chosen == "w1" == result.served_by
        assert decision.capability == "generate"
        assert decision.attempt == 1 and decision.outcome == "ok"
        assert decision.score > 0


async def test_reply_headers_explain_the_answer(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway()
        await fed.node("w1", models=MODELS)
        await fed.seen("w1")
        nc = await fed.client()
        msg = await nc.request("infer.generate", b'{"input":"hi"}', timeout=5)
        assert msg.headers[h.SERVED_BY] == "w1"
        assert msg.headers[h.ATTEMPTS] == "1"
        assert int(msg.headers[h.OVERHEAD_US]) >= 0
        # a caller's traceparent comes back unchanged
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        msg = await nc.request(
            "infer.generate", b'{"input":"hi"}', timeout=5, headers={"traceparent": tp}
        )
        assert msg.headers["traceparent"] == tp


async def test_access_log_one_line_per_request_with_ids(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(access_log=True)
        await fed.node("w1", models=MODELS)
        await fed.seen("w1")
        nc = await fed.client()
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with caplog.at_level("INFO", logger="fedgate.gateway"):
            for i in range(3):
                await nc.request(
                    "infer.generate",
                    b'{"request_id":"log-%d"}' % i,
                    timeout=5,
                    headers={"traceparent": tp},
                )
            # With direct replies the caller may have its answer before the gateway has
            # handled the node's copy and logged the request: wait for the line.

            def logged() -> list[logging.LogRecord]:
                return [
                    r for r in caplog.records if getattr(r, "request_id", "").startswith("log-")
                ]

            await eventually(lambda: len(logged()) >= 3, 5.0, "three access-log lines")
        lines = logged()
        assert [r.request_id for r in lines] == ["log-0", "log-1", "log-2"]  # type: ignore[attr-defined]
        assert all(r.trace_id == "0af7651916cd43dd8448eb211c80319c" for r in lines)  # type: ignore[attr-defined]


async def test_bad_heartbeat_flood_is_logged_at_a_rate_limit(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway()
        nc = await fed.client()
        with caplog.at_level("WARNING", logger="fedgate.gateway"):
            for _ in range(200):
                await nc.publish("fed.heartbeat.evil", b'{"node_id":"other","incarnation":"x"}')
            await nc.flush()
            await fed.node("w1", models=MODELS)
            await fed.seen("w1")  # heartbeats after the flood were processed
        spoofed = [r for r in caplog.records if "claims node" in r.getMessage()]
        assert 1 <= len(spoofed) <= 2
        assert gw.catalog.node("other") is None and gw.catalog.node("evil") is None
