"""Front-door edges: size limits, values copied onto NATS, request ids, error pages,
the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway import intake
from gateway.http import FrontDoor
from shared import messages as m
from shared.config import GatewayConfig
from shared.messages import InferRequest
from tests.frontdoor.conftest import Door
from tests.helpers import eventually
from worker.backends.base import chat_from
from worker.backends.synthetic import expected_text

MODEL = "edge"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def synth(door: Door) -> Door:
    await door.fed.node("s1", models={MODEL: ("generate", "embed")})
    await door.fed.seen("s1")
    return door


def test_a_chat_split_for_nats_comes_back_whole() -> None:
    chat: list[Any] = [
        {"role": "system", "content": "line one\nline two", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "parts stay"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "é ünïcode 🙂"},
        {"role": "user", "content": ""},
        {"role": "user", "content": "last"},
    ]  # fmt: skip
    text, messages, spans = intake.split_chat(chat)
    assert text == "line one\nline two\né ünïcode 🙂\nlast"
    request = InferRequest(input=text, params={"messages": messages, "input_spans": spans})
    whole = chat_from(m.request_decoder.decode(m.encode(request)))  # across the wire
    assert whole.params == {"messages": chat}
    assert whole.input == text


def test_max_body_follows_the_servers_max_payload() -> None:
    assert intake.max_body(1 << 20, 1 << 20) == (1 << 20) - intake.ENVELOPE_BYTES
    assert intake.max_body(65_536, 1 << 20) == 65_536
    assert intake.max_body(1 << 20, 0) == 1 << 20  # unknown: the configured limit


async def test_a_large_prompt_that_fits_is_served(synth: Door) -> None:
    """600 KB of chat under a 1 MiB max_payload: it travels once, so it fits."""
    body = {**CHAT, "messages": [{"role": "user", "content": "a" * 600_000}]}
    status, answer = await synth.post("/v1/chat/completions", body)
    assert status == 200, answer


@pytest.mark.parametrize("size", [70_000, 300_000])
async def test_too_large_is_an_openai_413_naming_the_limit(synth: Door, size: int) -> None:
    gateway = await synth.fed.gateway(GatewayConfig(max_payload_bytes=65_536))
    await synth.fed.seen("s1")
    front = FrontDoor(gateway, port=0)
    await front.start()
    try:
        url = f"http://127.0.0.1:{front.port}/v1/chat/completions"
        for body in (
            {**CHAT, "messages": [{"role": "user", "content": "a" * size}]},
            {"model": MODEL, "prompt": "b" * size},
        ):
            path = url if "messages" in body else url.replace("chat/", "")
            async with synth.http.post(path, json=body) as resp:
                assert resp.status == 413
                assert resp.content_type == "application/json"
                error = (await resp.json())["error"]
            assert error["code"] == "too_large"
            assert error["type"] == "invalid_request_error"
            assert "65536" in error["message"]
        async with synth.http.post(url, json=CHAT) as resp:  # still serving
            assert resp.status == 200
    finally:
        await front.stop()


async def test_x_request_id_is_the_nats_id_within_the_tenant(synth: Door) -> None:
    """A valid X-Request-Id is echoed and is the request id on NATS (scoped to the
    caller's tenant: here http-anonymous, no keys); an id outside the contract's alphabet
    is echoed and replaced. The front door hands requests to its gateway in-process:
    NATS sees them as dispatches."""
    nc = await synth.fed.client()
    seen: list[Any] = []

    async def on_dispatch(msg: Any) -> None:
        seen.append(msg)

    await nc.subscribe("fed.node.*.infer", cb=on_dispatch)
    await nc.flush()

    def dispatch_of(request_id: str) -> Any:
        return next((d for d in seen if json.loads(d.data)["request_id"] == request_id), None)

    for given, used_on_nats in (("mine-1", True), ("mine-1", True), ("not valid!", False)):
        seen.clear()
        headers = {"X-Request-Id": given, "traceparent": TRACE}
        async with synth.http.post(
            synth.base + "/v1/chat/completions", json=CHAT, headers=headers
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == given
            fed_id = resp.headers["X-Fed-Request-Id"]
        await eventually(lambda i=fed_id: dispatch_of(i) is not None, 10, f"dispatch {fed_id}")
        msg = dispatch_of(fed_id)
        assert json.loads(msg.data)["request"]["tenant_id"] == m.ANONYMOUS_HTTP_TENANT
        assert msg.headers is not None and msg.headers["traceparent"] == TRACE
        assert (fed_id == given) is used_on_nats
        if not used_on_nats:
            assert len(fed_id) == 16


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [
        ({"traceparent": "not-a-trace"}, {}, "traceparent"),
        ({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, {}, "traceparent"),
        ({"traceparent": TRACE, "tracestate": "a=" + "b" * 600}, {}, "tracestate"),
        ({"X-Request-Id": "x" * 300}, {}, "X-Request-Id"),
        ({}, {"model": "m" * 300}, "model"),
        ({}, {"model": 5}, "model"),
        ({}, {"user": "u" * 300}, "user"),
        ({}, {"qos": {"privacy": "secret"}}, "qos.privacy"),
        ({}, {"qos": {"allowed_regions": []}}, "qos.allowed_regions"),
        ({}, {"capability": "gen.erate"}, "capability"),
        ({}, {"capability": ">"}, "capability"),
        ({}, {"timeout_ms": 0}, "timeout_ms"),
    ],
)
async def test_client_values_copied_onto_nats_are_checked(
    synth: Door, headers: dict[str, str], body: dict[str, Any], param: str
) -> None:
    async with synth.http.post(
        synth.base + "/v1/chat/completions", json={**CHAT, **body}, headers=headers
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("bad_request", param)


async def test_every_error_page_is_openai_json(synth: Door) -> None:
    for method, path, status in (
        ("GET", "/nope", 404),
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/models", 405),
    ):
        async with synth.http.request(method, synth.base + path) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}
    async with synth.http.post(synth.base + "/v1/completions", data=b"\xff\xfe") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"


async def test_an_unexpected_failure_is_a_json_500(
    synth: Door, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(synth.front.client, "infer", broken)
    async with synth.http.post(synth.base + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 500
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal")
    monkeypatch.undo()
    status, _ = await synth.post("/v1/chat/completions", CHAT)
    assert status == 200


async def test_embeddings_refuse_stream_and_count_usage(synth: Door) -> None:
    status, answer = await synth.post("/v1/embeddings", {"model": MODEL, "input": ["a b", "c"]})
    assert status == 200, answer
    assert answer["usage"]["prompt_tokens"] == 3
    status, answer = await synth.post(
        "/v1/embeddings", {"model": MODEL, "input": "a", "stream": True}
    )
    assert (status, answer["error"]["param"]) == (400, "stream")


async def test_a_chat_reaches_a_backend_without_chat_format(synth: Door) -> None:
    status, answer = await synth.post("/v1/chat/completions", CHAT)
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == expected_text(MODEL, "hi", None, 3)


async def test_openapi_document(synth: Door) -> None:
    async with synth.http.get(synth.base + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    }
    chat = doc["components"]["schemas"]["ChatRequest"]
    assert chat["additionalProperties"] is False
    assert {"messages", "tools", "tool_choice", "max_tokens", "qos"} <= set(chat["properties"])


async def test_the_sdk_sees_typed_errors(synth: Door) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{synth.base}/v1", api_key="x", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0
            )
        assert info.value.body["param"] == "max_tokens"  # type: ignore[index]
    finally:
        await client.close()


async def test_a_closed_session_is_harmless(synth: Door) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(synth.base + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200


async def test_oversized_headers_are_a_json_431_and_never_a_traceback(
    synth: Door, caplog: pytest.LogCaptureFixture
) -> None:
    """Headers over fedgate's 32 KiB total: an OpenAI-shaped 431. A header line over
    aiohttp's own 64 KiB limit is refused by its parser (plain 400, documented) with one
    info line, not an error-level traceback that any client could repeat at will."""
    url = synth.base + "/v1/chat/completions"
    async with synth.http.post(url, json=CHAT, headers={"X-Big": "a" * 40_000}) as resp:
        assert resp.status == 431 and resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["code"] == "headers_too_large" and "32768" in error["message"]
    caplog.clear()
    async with aiohttp.ClientSession() as fresh:
        async with fresh.post(url, json=CHAT, headers={"X-Huge": "a" * 100_000}) as resp:
            assert resp.status == 400
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.records  # no ERROR
    status, answer = await synth.post("/v1/chat/completions", CHAT)  # still serving
    assert status == 200, answer
