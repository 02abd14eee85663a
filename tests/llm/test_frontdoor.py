"""The OpenAI-compatible front door against synthetic workers (real processes, no model).

One nats-server, one ``fedgate gateway --http-port`` (with an API key) and one
synthetic worker serve the whole module; the synthetic backend is deterministic, so
every answer is checked exactly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from shared.natsserver import NatsServer
from tests.helpers import Proc, connect, processes
from tests.llm.conftest import API_KEY, free_port, gateway_config, models_at, wait_until
from worker.backends.synthetic import embedding_of, expected_text

MODEL = "synth"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def door(module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a front door with one synthetic worker behind it."""
    port = free_port()
    url = module_nats.url
    config = gateway_config(tmp_path_factory.mktemp("gw"))
    with processes() as procs:
        gw = Proc("gateway", "--nats", url, "--http-port", str(port), "--config", str(config))
        procs.append(gw)
        procs.append(
            Proc(
                "worker",
                "--nats",
                url,
                "--node-id",
                "w1",
                "--model",
                MODEL,
                "--capability",
                "generate",
                "--capability",
                "embed",
                "--heartbeat-interval",
                "0.2",
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: MODEL in models_at(base), 30, "front door lists the worker", gw.proc)
        yield base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def events(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """The JSON events of a server-sent-events body, up to ``[DONE]``."""
    out = []
    async for raw in resp.content:
        line = raw.strip()
        if line.startswith(b"data: "):
            if line[6:] == b"[DONE]":
                break
            out.append(json.loads(line[6:]))
    return out


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]
PROMPT = "be brief\nhello there"


async def test_models_list(door: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{door}/v1/models") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "list"
    (entry,) = [m for m in body["data"] if m["id"] == MODEL]
    assert entry["object"] == "model"
    assert entry["capabilities"] == ["embed", "generate"]


async def test_chat_not_streaming(door: str, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 7, "seed": 3}
    async with http.post(f"{door}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert resp.headers["X-Fed-Served-By"] == "w1"
        assert resp.headers["X-Fed-Attempts"] == "1"
        assert resp.headers["X-Fed-Request-Id"]
    assert answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected_text(MODEL, PROMPT, 3, 7)}
    assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 7


async def test_chat_streaming(door: str, http: aiohttp.ClientSession) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(f"{door}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        got = await events(resp)
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in got)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in got if e["choices"])
    assert text == expected_text(MODEL, PROMPT, None, 5)
    final, totals = got[-2:]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["fedgate"]["served_by"] == "w1"
    # include_usage: "usage": null on every chunk, then one chunk without choices
    assert all(e["usage"] is None for e in got[:-1])
    assert totals["choices"] == []
    assert totals["usage"]["completion_tokens"] == 5


async def test_completions(door: str, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "once upon", "max_tokens": 4}
    async with http.post(f"{door}/v1/completions", json=body) as resp:
        answer = await resp.json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == expected_text(MODEL, "once upon", None, 4)
    async with http.post(f"{door}/v1/completions", json={**body, "stream": True}) as resp:
        got = await events(resp)
    assert "".join(e["choices"][0]["text"] for e in got) == expected_text(
        MODEL, "once upon", None, 4
    )


async def test_embeddings_float_and_base64(door: str, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "input": ["first text", "second"]}
    async with http.post(f"{door}/v1/embeddings", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert answer["data"][0]["embedding"] == embedding_of(MODEL, "first text", 8)
    assert answer["data"][1]["embedding"] == embedding_of(MODEL, "second", 8)
    import base64
    from array import array

    async with http.post(
        f"{door}/v1/embeddings", json={**body, "encoding_format": "base64"}
    ) as resp:
        encoded = (await resp.json())["data"][0]["embedding"]
    vector = array("f", base64.b64decode(encoded)).tolist()
    assert vector == pytest.approx(embedding_of(MODEL, "first text", 8), abs=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, 404, "model_not_found"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "bad_request"),
        ("/v1/completions", {"model": MODEL, "prompt": 5}, 400, "bad_request"),
        ("/v1/embeddings", {"model": MODEL}, 400, "bad_request"),
    ],
)
async def test_errors_are_openai_shaped(
    door: str, http: aiohttp.ClientSession, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    async with http.post(f"{door}{path}", json=body) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
    assert err["code"] == code
    assert err["message"]
    assert err["type"] == "invalid_request_error"


async def test_not_json_is_400(door: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{door}/v1/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", "Basic abc"])
async def test_api_key_required(door: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions")):
            async with session.request(method, f"{door}{path}", json={"prompt": "x"}) as resp:
                assert resp.status == 401
                err = (await resp.json())["error"]
                assert err["type"] == "authentication_error"
                assert err["code"] == "invalid_api_key"


async def test_tenant_and_traceparent_reach_nats(
    door: str, http: aiohttp.ClientSession, module_nats: NatsServer
) -> None:
    nc = await connect(module_nats.url)
    try:
        # The front door hands requests to its gateway in-process: NATS sees the dispatch.
        sub = await nc.subscribe("fed.node.*.infer")
        await nc.flush()
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        body = {"model": MODEL, "prompt": "traced", "max_tokens": 2}
        async with http.post(
            f"{door}/v1/completions", json=body, headers={"traceparent": trace}
        ) as resp:
            assert resp.status == 200
        msg = await sub.next_msg(timeout=5)
        while json.loads(msg.data)["request_id"].startswith("canary-"):
            msg = await sub.next_msg(timeout=5)
        assert msg.headers is not None
        assert msg.headers["traceparent"].split("-")[1] == trace.split("-")[1]
        request = json.loads(msg.data)["request"]
        assert request["tenant_id"] == "acme"
        assert request["params"] == {"max_tokens": 2}
    finally:
        await nc.close()


async def test_openai_sdk_against_synthetic(door: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{door}/v1", api_key=API_KEY, max_retries=0)
    try:
        chat = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        assert chat.choices[0].message.content == expected_text(MODEL, PROMPT, None, 3)
        parts = []
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=3, stream=True
        )
        async for event in stream:
            parts.append(event.choices[0].delta.content or "")
        assert "".join(parts) == expected_text(MODEL, PROMPT, None, 3)
        emb = await client.embeddings.create(model=MODEL, input="vector me")
        assert emb.data[0].embedding == pytest.approx(embedding_of(MODEL, "vector me", 8), abs=1e-6)
        assert MODEL in {m.id async for m in client.models.list()}
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="missing", prompt="x")
        bad = openai.AsyncOpenAI(base_url=f"{door}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
        await bad.close()
    finally:
        await client.close()
