"""What a node puts on the wire for what its backend yields (raw NATS, no gateway).

Tool-call deltas and log-probabilities ride on chunks (``text`` empty only then) and on
the result; the engine's usage becomes ``prompt_tokens`` / ``Fed-Prompt-Tokens`` and the
token total; backend errors leave as the contract's headers (``Retry-After`` included);
an embedding asked as a stream is a ``400``; a chat sent once in ``params.messages``
still reaches a backend without a chat format as text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import errors
from shared import headers as h
from tests.helpers import connect
from worker.backends.base import BackendError, Job, Piece
from worker.backends.synthetic import SyntheticBackend, expected_text
from worker.node import Node

CALLS = [
    [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}],
    [{"index": 0, "function": {"arguments": '{"a"'}}],
    [{"index": 0, "function": {"arguments": ": 1}"}}],
]
LOGPROBS = {"content": [{"token": "x", "logprob": -1.0, "top_logprobs": []}]}


class Scripted:
    """A backend yielding ``pieces``, or raising ``error`` first."""

    def __init__(self, pieces: list[Piece], error: BaseException | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.jobs: list[Job] = []

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        self.jobs.append(job)
        if self.error is not None:
            raise self.error
        for piece in self.pieces:
            yield piece


TOOL_PIECES = [
    *(Piece(text="", tokens=1, tool_calls=c) for c in CALLS),
    Piece(text="", tokens=0, finish_reason="tool_calls", prompt_tokens=11, completion_tokens=6),
]


async def ask(nc: Client, node_id: str, request: dict[str, Any]) -> list[Msg]:
    """Dispatch ``request`` to the node; every reply up to the last one."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    capability = request.pop("cap", "generate")
    dispatch = {"request": request, "request_id": "r1", "capability": capability}
    await nc.publish(f"fed.node.{node_id}.infer", json.dumps(dispatch).encode(), reply=inbox)
    out: list[Msg] = []
    while True:
        msg = await sub.next_msg(timeout=5)
        out.append(msg)
        if not request.get("stream") or not msg.data:
            await sub.unsubscribe()
            return out


async def node_with(nats_url: str, backend: Any, **kwargs: Any) -> tuple[Node, Client]:
    nc = await connect(nats_url)
    node = Node(nc, backend, node_id="w1", models={"m": ("generate", "embed")}, **kwargs)
    await node.start()
    return node, nc


async def test_streamed_tool_calls_and_usage(nats_url: str) -> None:
    node, nc = await node_with(nats_url, Scripted(TOOL_PIECES))
    try:
        msgs = await ask(nc, "w1", {"model": "m", "stream": True})
    finally:
        await node.stop()
        await nc.close()
    *chunks, end = msgs
    bodies = [json.loads(c.data) for c in chunks]
    assert [b["seq"] for b in bodies] == [1, 2, 3]
    assert [b["text"] for b in bodies] == ["", "", ""]
    assert [b["tool_calls"] for b in bodies] == CALLS
    assert end.headers is not None
    assert end.headers[h.FINISH_REASON] == "tool_calls"
    assert end.headers[h.PROMPT_TOKENS] == "11"
    assert end.headers[h.TOKENS] == "6"  # the engine's count, not the deltas'


async def test_coalesced_tool_call_deltas_merge(nats_url: str) -> None:
    pieces = [Piece(text="hi ", tokens=1, logprobs=LOGPROBS), *TOOL_PIECES]
    node, nc = await node_with(nats_url, Scripted(pieces), stream_interval_ms=60_000)
    try:
        msgs = await ask(nc, "w1", {"model": "m", "stream": True})
    finally:
        await node.stop()
        await nc.close()
    (chunk, _end) = msgs
    body = json.loads(chunk.data)
    assert body["text"] == "hi "
    assert body["logprobs"] == LOGPROBS
    assert body["tool_calls"] == [
        {"index": 0, "id": "call_9", "type": "function",
         "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]  # fmt: skip


async def test_result_carries_tool_calls_and_prompt_tokens(nats_url: str) -> None:
    node, nc = await node_with(nats_url, Scripted(TOOL_PIECES))
    try:
        (msg,) = await ask(nc, "w1", {"model": "m"})
    finally:
        await node.stop()
        await nc.close()
    result = json.loads(msg.data)
    assert result["output"] == ""
    assert result["finish_reason"] == "tool_calls"
    assert (result["prompt_tokens"], result["tokens"]) == (11, 6)
    assert result["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]


class Paced:
    """A backend whose first token comes after ``ttft_s``, then ``tokens`` one by one."""

    def __init__(self, ttft_s: float, tokens: int, embedding: bool = False) -> None:
        self.ttft_s, self.tokens, self.embedding = ttft_s, tokens, embedding

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        await asyncio.sleep(self.ttft_s)  # the backend's prefill, not a synchronisation
        if self.embedding:
            yield Piece(text="", tokens=0, embedding=[0.5, 0.5])
            return
        for _ in range(self.tokens):
            yield Piece(text="x", tokens=1)
            await asyncio.sleep(0.01)


async def test_result_carries_the_node_s_time_to_first_token(nats_url: str) -> None:
    """A result says when its first token came (``ttft_ms``) so that a gateway can judge
    a non-streaming answer per unit of work; an embedding says nothing."""
    node, nc = await node_with(nats_url, Paced(0.2, 10))
    try:
        (msg,) = await ask(nc, "w1", {"model": "m"})
    finally:
        await node.stop()
        await nc.close()
    result = json.loads(msg.data)
    assert result["tokens"] == 10
    assert 200.0 <= result["ttft_ms"] < result["latency_ms"]
    assert result["latency_ms"] - result["ttft_ms"] >= 90.0  # 9 gaps of 10 ms, at least
    node, nc = await node_with(nats_url, Paced(0.01, 0, embedding=True))
    try:
        (msg,) = await ask(nc, "w1", {"model": "m", "cap": "embed"})
    finally:
        await node.stop()
        await nc.close()
    result = json.loads(msg.data)
    assert result["embedding"] == [0.5, 0.5] and result.get("ttft_ms") is None


@pytest.mark.parametrize(
    ("error", "code", "kind", "extra"),
    [
        (errors.BadRequest("no"), "400", "bad_request", {}),
        (errors.UpstreamError("engine 500"), "502", "upstream_error", {}),
        (errors.NodeUnavailable("no such model"), "503", "node_unavailable", {}),
        (errors.Overloaded("busy", retry_after_s=2.5), "429", "overloaded", {h.RETRY_AFTER: "3"}),
        (BackendError("injected"), "500", "internal", {}),
        (RuntimeError("a bug"), "500", "internal", {}),
    ],
)
async def test_backend_errors_leave_as_contract_headers(
    nats_url: str, error: BaseException, code: str, kind: str, extra: dict[str, str]
) -> None:
    node, nc = await node_with(nats_url, Scripted([], error))
    try:
        (msg,) = await ask(nc, "w1", {"model": "m"})
    finally:
        await node.stop()
        await nc.close()
    assert msg.data == b""
    hdrs = msg.headers or {}
    assert (hdrs[h.ERROR_CODE], hdrs[h.FED_ERROR], hdrs[h.SERVED_BY]) == (code, kind, "w1")
    assert {k: hdrs.get(k) for k in extra} == extra


async def test_embedding_asked_as_a_stream_is_bad_request(nats_url: str) -> None:
    node, nc = await node_with(nats_url, SyntheticBackend())
    try:
        msgs = await ask(nc, "w1", {"model": "m", "stream": True, "input": "x", "cap": "embed"})
    finally:
        await node.stop()
        await nc.close()
    (end,) = msgs  # no chunk, no "ok"
    assert end.headers is not None
    assert (end.headers[h.ERROR_CODE], end.headers[h.FED_ERROR]) == ("400", "bad_request")
    assert "stream: false" in end.headers[h.ERROR]


@pytest.mark.parametrize("spans", [False, True], ids=["messages-only", "text-in-input"])
async def test_a_chat_sent_once_reaches_every_backend(nats_url: str, spans: bool) -> None:
    """A raw caller's chat (messages only, ``input`` empty) and the front door's (text in
    ``input`` once, spans in params): a chat backend gets the messages whole, a plain
    one the text."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    params: dict[str, Any] = {"messages": messages}
    request: dict[str, Any] = {"model": "m", "params": params}
    if spans:
        request["input"] = "be brief"
        params["messages"] = [{"role": "system", "content": ""}, messages[1]]
        params["input_spans"] = [[0, 0, 8]]
    backend = Scripted([Piece(text="ok")])
    node, nc = await node_with(nats_url, backend)
    synth_node = Node(nc, SyntheticBackend(), node_id="w2", models={"m": ("generate",)})
    await synth_node.start()
    try:
        await ask(nc, "w1", json.loads(json.dumps(request)))
        (msg,) = await ask(nc, "w2", json.loads(json.dumps(request)))
    finally:
        await synth_node.stop()
        await node.stop()
        await nc.close()
    (job,) = backend.jobs
    assert job.messages == messages  # the chat itself, whole
    assert "input_spans" not in job.params
    prompt = "be brief" if spans else "be brief\nhello there"
    assert job.prompt == prompt
    assert json.loads(msg.data)["output"] == expected_text("m", prompt)


async def test_bad_input_spans_are_a_bad_request(nats_url: str) -> None:
    node, nc = await node_with(nats_url, Scripted([Piece(text="ok")]))
    params = {"messages": [{"role": "user", "content": ""}], "input_spans": [[5, 0, 1]]}
    try:
        (msg,) = await ask(nc, "w1", {"model": "m", "input": "x", "params": params})
    finally:
        await node.stop()
        await nc.close()
    assert msg.headers is not None and msg.headers[h.FED_ERROR] == "bad_request"


async def test_cancel_reaches_the_backend(nats_url: str) -> None:
    started = asyncio.Event()

    class Hold:
        async def stream(self, job: Job) -> AsyncIterator[Piece]:
            started.set()
            await asyncio.Event().wait()
            yield Piece(text="never")

    node, nc = await node_with(nats_url, Hold())
    try:
        reply = asyncio.create_task(ask(nc, "w1", {"model": "m"}))
        await asyncio.wait_for(started.wait(), 5)
        await nc.publish("fed.node.w1.cancel", b'{"request_id": "r1"}')
        (msg,) = await asyncio.wait_for(reply, 5)
    finally:
        await node.stop()
        await nc.close()
    assert msg.headers is not None and msg.headers[h.FED_ERROR] == "cancelled"
