"""The openai backend against a scripted OpenAI-compatible server on loopback.

Fast and model-free: request mapping, SSE parsing, resume, error mapping and
readiness. The real-model runs are in ``test_real_models.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from shared import errors
from shared.client import FedClient
from shared.messages import InferRequest
from tests.helpers import Proc, connect, eventually, processes
from tests.llm.conftest import free_port
from worker.backends.base import BackendError, Job, Piece
from worker.backends.openai import OpenAIBackend, OpenAIOptions

NEVER = web.AppKey("never", asyncio.Event)


class Upstream:
    """A scripted upstream: records requests, answers what ``status``/``words`` say."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        self.words = ["Hello", " world", "!"]
        self.truncate = False
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/completions", self.complete),
                web.post("/v1/chat/completions", self.complete),
                web.post("/v1/embeddings", self.embed),
            ]
        )
        self.runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "upstream-only"}]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.status != 200:
            return web.json_response({"error": {"message": "nope"}}, status=self.status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chat = request.path.endswith("chat/completions")
        for word in self.words:
            choice = {"delta": {"content": word}} if chat else {"text": word}
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        if self.truncate:
            return resp  # ends without a finish_reason or [DONE]
        done = {"choices": [{"delta": {}, "text": "", "finish_reason": "length"}]}
        await resp.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def embed(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, await request.json()))
        return web.json_response(
            {"data": [{"embedding": [0.5, -0.25]}], "usage": {"prompt_tokens": 3}}
        )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.runner.cleanup()


def job(
    capability: str = "generate", resume: str = "", resume_tokens: int = 0, **params: Any
) -> Job:
    request = InferRequest(input="Say hi", params=params)
    return Job(capability, "fed-model", request, resume, resume_tokens)


async def collect(backend: OpenAIBackend, j: Job) -> list[Piece]:
    return [p async for p in backend.stream(j)]


async def test_completion_streams_and_maps_params(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url + "/v1/"))
    try:
        pieces = await collect(backend, job(max_tokens=5, temperature=0, seed=1, top_k=3))
    finally:
        await backend.close()
    assert "".join(p.text for p in pieces) == "Hello world!"
    assert pieces[-1].finish_reason == "length"
    path, body = upstream.requests[0]
    assert path == "/v1/completions"
    # the upstream's only model stands in for an unknown fedgate model id
    assert body["model"] == "upstream-only"
    assert body["prompt"] == "Say hi"
    assert body["max_tokens"] == 5
    assert (body["temperature"], body["seed"], body["stream"]) == (0, 1, True)
    assert "top_k" not in body


async def test_chat_resume_continues_after_the_relayed_text(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url, upstream_model="m"))
    messages = [{"role": "user", "content": "Say hi"}]
    try:
        pieces = await collect(
            backend, job(resume="Hi there", resume_tokens=2, max_tokens=6, messages=messages)
        )
    finally:
        await backend.close()
    assert "".join(p.text for p in pieces) == "Hello world!"
    path, body = upstream.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "m"
    assert body["max_tokens"] == 4  # the whole-output budget minus the resumed tokens
    assert body["messages"][-1] == {"role": "assistant", "content": "Hi there"}
    assert body["continue_final_message"] is True


async def test_plain_completion_resume_extends_the_prompt(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url))
    try:
        await collect(backend, job(resume=" Hi", resume_tokens=1, max_tokens=3))
        assert await collect(backend, job(resume="x", resume_tokens=3, max_tokens=3)) == [
            Piece(text="", tokens=0, finish_reason="length")
        ]
    finally:
        await backend.close()
    assert upstream.requests[0][1]["prompt"] == "Say hi Hi"
    assert len(upstream.requests) == 1  # nothing left to produce: no upstream call


async def test_embedding(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url))
    try:
        (piece,) = await collect(backend, job("embed"))
    finally:
        await backend.close()
    assert piece.embedding == [0.5, -0.25]
    assert piece.tokens == 3
    assert upstream.requests[0] == ("/v1/embeddings", {"model": "upstream-only", "input": "Say hi"})


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 400, "bad_request"),
        (422, 400, "bad_request"),
        (429, 429, "overloaded"),
        (500, 502, "internal"),
        (503, 503, "node_draining"),
        (504, 504, "timeout"),
    ],
)
async def test_upstream_status_maps_to_contract(
    upstream: Upstream, status: int, code: int, kind: str
) -> None:
    upstream.status = status
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url))
    try:
        with pytest.raises(BackendError) as info:
            await collect(backend, job())
    finally:
        await backend.close()
    assert (info.value.code, info.value.kind) == (code, kind)


async def test_unsupported_capability_is_bad_request(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url))
    try:
        with pytest.raises(BackendError) as info:
            await collect(backend, job("transcribe"))
    finally:
        await backend.close()
    assert info.value.code == 400


async def test_unreachable_upstream_is_not_ready() -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=f"http://127.0.0.1:{free_port()}"))
    try:
        assert await backend.ready() is False
        with pytest.raises(BackendError) as info:
            await collect(backend, job())
        assert (info.value.code, info.value.kind) == (503, "node_draining")
    finally:
        await backend.close()


async def test_ready_follows_the_upstream(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url, ready_ttl_s=0.001))
    try:
        assert await backend.ready() is True
        assert backend.upstream_models == ("upstream-only",)
        await upstream.runner.cleanup()
        assert await backend.ready() is False
    finally:
        await backend.close()


async def test_read_timeout_maps_to_504(upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.Response:
        await request.app[NEVER].wait()  # a stalled upstream
        return web.Response()

    app = web.Application()
    app[NEVER] = asyncio.Event()
    app.router.add_post("/v1/completions", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    backend = OpenAIBackend(OpenAIOptions(upstream=f"http://127.0.0.1:{port}", read_timeout_s=0.2))
    try:
        with pytest.raises(BackendError) as info:
            await collect(backend, job())
        assert (info.value.code, info.value.kind) == (504, "timeout")
    finally:
        await backend.close()
        app[NEVER].set()
        await runner.cleanup()


async def test_dead_upstream_makes_the_node_not_ready(nats_url: str) -> None:
    """A worker whose upstream is down heartbeats ``draining: true`` and gets no work."""
    nc = await connect(nats_url)
    try:
        sub = await nc.subscribe("fed.heartbeat.oa-dead")
        await nc.flush()
        with processes() as procs:
            procs.append(Proc("gateway", "--nats", nats_url, "--max-retries", "1"))
            procs.append(
                Proc(
                    "worker",
                    "--nats",
                    nats_url,
                    "--node-id",
                    "oa-dead",
                    "--heartbeat-interval",
                    "0.2",
                    "--model",
                    "dead-model",
                    "--backend",
                    "openai",
                    "--upstream",
                    f"http://127.0.0.1:{free_port()}",
                )
            )

            async def draining() -> bool:
                msg = await sub.next_msg(timeout=10)
                return bool(json.loads(msg.data)["draining"])

            await eventually(draining, 15, "oa-dead heartbeats draining: true")
            client = FedClient(nc, timeout_s=10)
            with pytest.raises(errors.FedError) as info:
                await client.infer("generate", "hi", model="dead-model")
            # the gateway no longer routes there: no eligible node (404) or none healthy (503)
            assert info.value.code in (404, 503)
    finally:
        await nc.close()


def test_token_level_embeddings_are_mean_pooled() -> None:
    from worker.backends.openai import pooled

    assert pooled([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]
    assert pooled([0.5, 1]) == [0.5, 1.0]


async def test_a_stream_cut_short_is_an_error(upstream: Upstream) -> None:
    upstream.truncate = True
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url))
    try:
        with pytest.raises(BackendError) as info:
            await collect(backend, job())
    finally:
        await backend.close()
    assert (info.value.code, info.value.kind) == (502, "internal")
