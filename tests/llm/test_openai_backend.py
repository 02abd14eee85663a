"""The openai backend against a scripted OpenAI-compatible server on loopback.

Fast and model-free: request mapping (every parameter passed through), SSE framings,
tool calls, usage, resume, the upstream error table and readiness. The real-model runs
are in ``test_real_models.py``; the front door's side in ``tests/frontdoor``.
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
from tests.llm.upstream import Upstream, delta, error
from worker.backends.base import Job, Piece
from worker.backends.openai import OpenAIBackend, OpenAIOptions

NEVER = web.AppKey("never", asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def backend(upstream: Upstream) -> AsyncIterator[OpenAIBackend]:
    b = OpenAIBackend(OpenAIOptions(upstream=upstream.url + "/v1/"))
    try:
        yield b
    finally:
        await b.close()


def job(
    capability: str = "generate",
    resume: str = "",
    resume_tokens: int = 0,
    input: str = "Say hi",
    **params: Any,
) -> Job:
    request = InferRequest(input=input, params=params)
    return Job(capability, "fed-model", request, resume, resume_tokens)


async def collect(backend: OpenAIBackend, j: Job) -> list[Piece]:
    return [p async for p in backend.stream(j)]


def text(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces)


async def test_completion_streams_and_passes_every_param(
    upstream: Upstream, backend: OpenAIBackend
) -> None:
    pieces = await collect(
        backend,
        job(max_tokens=5, temperature=0, seed=1, top_k=3, logit_bias={"42": -100}, user="u1"),
    )
    assert text(pieces) == "Hello world!"
    assert pieces[-1].finish_reason == "length"
    path, body = upstream.requests[0]
    assert path == "/v1/completions"
    # the upstream's only model stands in for an unknown fedgate model id
    assert body["model"] == "upstream-only"
    assert body["prompt"] == "Say hi"
    assert body["max_tokens"] == 5
    assert (body["temperature"], body["seed"], body["stream"]) == (0, 1, True)
    # every other parameter goes upstream as it is (the upstream accepts it or says 400)
    assert (body["top_k"], body["logit_bias"], body["user"]) == (3, {"42": -100}, "u1")
    assert body["stream_options"] == {"include_usage": True}


async def test_usage_comes_from_the_upstream(upstream: Upstream, backend: OpenAIBackend) -> None:
    pieces = await collect(backend, job(messages=[{"role": "user", "content": "hi"}]))
    assert (pieces[-1].prompt_tokens, pieces[-1].completion_tokens) == (5, 3)


async def test_max_completion_tokens_keeps_its_name(
    upstream: Upstream, backend: OpenAIBackend
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    await collect(backend, job(messages=messages, max_tokens=9, max_completion_tokens=9))
    body = upstream.requests[0][1]
    assert body["max_completion_tokens"] == 9
    assert "max_tokens" not in body


async def test_n_other_than_one_is_refused(backend: OpenAIBackend) -> None:
    with pytest.raises(errors.BadRequest, match="n must be 1"):
        await collect(backend, job(n=2))


async def test_chat_resume_continues_after_the_relayed_text(upstream: Upstream) -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url, upstream_model="m"))
    messages = [{"role": "user", "content": "Say hi"}]
    try:
        pieces = await collect(
            backend, job(resume="Hi there", resume_tokens=2, max_tokens=6, messages=messages)
        )
    finally:
        await backend.close()
    assert text(pieces) == "Hello world!"
    # usage: the resumed text was part of the upstream's prompt, not of the caller's
    assert pieces[-1].prompt_tokens == 3
    path, body = upstream.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "m"
    assert body["max_tokens"] == 4  # the whole-output budget minus the resumed tokens
    assert body["messages"][-1] == {"role": "assistant", "content": "Hi there"}
    assert body["continue_final_message"] is True
    assert messages == [{"role": "user", "content": "Say hi"}]  # the job's own list untouched


async def test_plain_completion_resume_extends_the_prompt(
    upstream: Upstream, backend: OpenAIBackend
) -> None:
    await collect(backend, job(resume=" Hi", resume_tokens=1, max_tokens=3))
    assert await collect(backend, job(resume="x", resume_tokens=3, max_tokens=3)) == [
        Piece(text="", tokens=0, finish_reason="length")
    ]
    assert upstream.requests[0][1]["prompt"] == "Say hi Hi"
    assert len(upstream.requests) == 1  # nothing left to produce: no upstream call


async def test_embedding(upstream: Upstream, backend: OpenAIBackend) -> None:
    (piece,) = await collect(backend, job("embed", dimensions=2))
    assert piece.embedding == [0.5, -0.25]
    assert piece.tokens == 3
    assert upstream.requests[0] == (
        "/v1/embeddings",
        {"model": "upstream-only", "input": "Say hi", "dimensions": 2},
    )


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]


async def test_tools_go_up_and_tool_call_deltas_come_back(
    upstream: Upstream, backend: OpenAIBackend
) -> None:
    calls = [
        [{"index": 0, "id": "call_2", "type": "function",
          "function": {"name": "get_weather", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"city": '}}],
        [{"index": 0, "function": {"arguments": '"Lyon"}'}}],
    ]  # fmt: skip

    async def tool_call(path: str, body: dict[str, Any]) -> Any:
        return [delta(tool_calls=c) for c in calls] + [delta(finish="tool_calls")]

    upstream.script = tool_call
    pieces = await collect(
        backend, job(input="", messages=HISTORY, tools=TOOLS, tool_choice="required")
    )
    body = upstream.requests[0][1]
    assert body["messages"] == HISTORY  # history, content parts and tool results untouched
    assert (body["tools"], body["tool_choice"]) == (TOOLS, "required")
    assert [p.tool_calls for p in pieces[:-1]] == calls
    assert pieces[-1].finish_reason == "tool_calls"


async def test_logprobs_come_back(upstream: Upstream, backend: OpenAIBackend) -> None:
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}

    async def with_logprobs(path: str, body: dict[str, Any]) -> Any:
        return [delta("Hi", logprobs=lp), delta(finish="stop")]

    upstream.script = with_logprobs
    pieces = await collect(backend, job(messages=HISTORY[:1], logprobs=True))
    assert pieces[0].logprobs == lp
    assert upstream.requests[0][1]["logprobs"] is True


FRAMES = {
    "crlf": [b'data: {"choices":[{"text":"He"}]}\r\n\r\n',
             b'data: {"choices":[{"text":"llo","finish_reason":"stop"}]}\r\n\r\n',
             b"data: [DONE]\r\n\r\n"],
    "cr": [b'data: {"choices":[{"text":"He"}]}\r\rdata: {"choices":[{"text":"llo",'
           b'"finish_reason":"stop"}]}\r\rdata: [DONE]\r\r'],
    "no space after colon": [b'data:{"choices":[{"text":"He"}]}\n\n',
                             b'data:{"choices":[{"text":"llo","finish_reason":"stop"}]}\n\n'],
    "multi-line data": [b'data: {"choices":\ndata: [{"text":"He"}]}\n\n',
                        b'data: {"choices":[{"text":"llo",\ndata: "finish_reason":"stop"}]}\n\n'],
    "comments and event lines": [b": keep-alive\n\n", b'event: message\nid: 1\nretry: 10\n',
                                 b'data: {"choices":[{"text":"He"}]}\n\n: ping\n\n',
                                 b'data: {"choices":[{"text":"llo","finish_reason":"stop"}]}\n\n'],
    "split mid-line": [b'da', b'ta: {"choices":[{"te', b'xt":"He"}]}\n', b'\ndata: {"choices"',
                       b':[{"text":"llo","finish_reason":"stop"}]}\n\n'],
}  # fmt: skip


@pytest.mark.parametrize("framing", sorted(FRAMES))
async def test_every_valid_sse_framing(
    upstream: Upstream, backend: OpenAIBackend, framing: str
) -> None:
    async def framed(path: str, body: dict[str, Any]) -> Any:
        return FRAMES[framing]

    upstream.script = framed
    pieces = await collect(backend, job())
    assert text(pieces) == "Hello"
    assert pieces[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "headers", "cls", "code", "retry_after"),
    [
        (400, {}, errors.BadRequest, 400, None),
        (413, {}, errors.BadRequest, 400, None),
        (422, {}, errors.BadRequest, 400, None),
        (401, {}, errors.NodeUnavailable, 503, None),
        (403, {}, errors.NodeUnavailable, 503, None),
        (404, {}, errors.NodeUnavailable, 503, None),
        (408, {}, errors.Timeout, 504, None),
        (429, {"Retry-After": "7"}, errors.Overloaded, 429, 7.0),
        (429, {}, errors.Overloaded, 429, None),
        (503, {"Retry-After": "3"}, errors.Overloaded, 429, 3.0),
        (503, {}, errors.UpstreamError, 502, None),
        (500, {}, errors.UpstreamError, 502, None),
        (502, {}, errors.UpstreamError, 502, None),
        (504, {}, errors.UpstreamError, 502, None),
    ],
)
async def test_upstream_status_maps_to_contract(
    upstream: Upstream,
    backend: OpenAIBackend,
    status: int,
    headers: dict[str, str],
    cls: type[errors.FedError],
    code: int,
    retry_after: float | None,
) -> None:
    async def failing(path: str, body: dict[str, Any]) -> Any:
        return error(status, "the model `x` does not exist", **headers)

    upstream.script = failing
    with pytest.raises(errors.FedError) as info:
        await collect(backend, job())
    assert type(info.value) is cls
    assert info.value.code == code
    assert "does not exist" in info.value.message
    assert getattr(info.value, "retry_after_s", None) == retry_after
    if retry_after is not None:
        assert info.value.headers()["Retry-After"] == str(int(retry_after))


@pytest.mark.parametrize(
    "frames",
    [
        [b'data: {"choices":[{"text":"He"}]}\n\n'],  # cut short: no finish, no [DONE]
        [b'data: {"choices":[{"text":"He"}]}\n\ndata: {not json\n\n'],
        [b'data: {"error":{"message":"engine died"}}\n\n'],
        [b'data: ["a list"]\n\n'],
    ],
    ids=["cut-short", "bad-json", "error-event", "not-an-object"],
)
async def test_a_broken_reply_is_upstream_error(
    upstream: Upstream, backend: OpenAIBackend, frames: list[bytes]
) -> None:
    async def broken(path: str, body: dict[str, Any]) -> Any:
        return frames

    upstream.script = broken
    with pytest.raises(errors.UpstreamError) as info:
        await collect(backend, job())
    assert (info.value.code, info.value.kind) == (502, "upstream_error")


async def test_unsupported_capability_is_bad_request(backend: OpenAIBackend) -> None:
    with pytest.raises(errors.BadRequest):
        await collect(backend, job("transcribe"))


async def test_unreachable_upstream_is_upstream_error_and_not_ready() -> None:
    backend = OpenAIBackend(OpenAIOptions(upstream=f"http://127.0.0.1:{free_port()}"))
    try:
        assert await backend.ready() is False
        with pytest.raises(errors.UpstreamError) as info:
            await collect(backend, job())
        assert (info.value.code, info.value.kind) == (502, "upstream_error")
        assert await backend.ready() is False
    finally:
        await backend.close()


async def test_ready_follows_the_upstream(upstream: Upstream) -> None:
    """Down when it stops (even with a kept-alive connection to it), up when it is back."""
    backend = OpenAIBackend(OpenAIOptions(upstream=upstream.url, ready_ttl_s=0))
    try:
        assert await backend.ready() is True
        assert backend.upstream_models == ("upstream-only",)
        await collect(backend, job())  # leaves a kept-alive connection in the SDK's pool
        port = upstream.port
        await upstream.stop()
        await eventually(lambda: _not(backend.ready()), 5, "not ready once the upstream stops")
        again = await Upstream().start(port)
        try:
            await eventually(backend.ready, 5, "ready once the upstream is back")
            again.models_status = 503  # loading
            await eventually(lambda: _not(backend.ready()), 5, "not ready while it says 503")
        finally:
            await again.stop()
    finally:
        await backend.close()


async def _not(ready: Any) -> bool:
    return not await ready


async def test_read_timeout_maps_to_504() -> None:
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
        with pytest.raises(errors.Timeout) as info:
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


async def test_a_chat_only_upstream_gets_plain_prompts_as_chat(
    upstream: Upstream, backend: OpenAIBackend
) -> None:
    """No /v1/completions (a hosted chat model): the first plain prompt falls back to
    chat, and later ones go there at once (canaries and plain callers keep working)."""

    async def chat_only(path: str, body: dict[str, Any]) -> Any:
        if path.endswith("/v1/completions"):
            return error(404, "Not Found")
        return [delta("pong"), delta(finish="stop")]

    upstream.script = chat_only
    assert text(await collect(backend, job(max_tokens=1, input="ping"))) == "pong"
    assert text(await collect(backend, job(max_tokens=1, input="again"))) == "pong"
    paths = [p for p, _ in upstream.requests]
    assert paths == ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions"]
    assert upstream.requests[1][1]["messages"] == [{"role": "user", "content": "ping"}]
