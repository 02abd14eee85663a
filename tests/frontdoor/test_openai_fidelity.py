"""The OpenAI API as it is, through the front door, a node and its openai backend.

Each test puts a scripted OpenAI-compatible upstream behind an openai-backend node and
checks both ends: what reached the upstream, and what the HTTP client got (tools and
tool calls both ways, usage, every parameter forwarded or refused, logprobs).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.frontdoor.conftest import Door
from tests.llm.upstream import delta, text_event

MODEL = "fid"
USER = [{"role": "user", "content": "weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
HISTORY = [
    {"role": "system", "content": "be brief", "name": "ops"},
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
CALL_DELTAS = [
    [{"index": 0, "id": "call_2", "type": "function",
      "function": {"name": "get_weather", "arguments": ""}}],
    [{"index": 0, "function": {"arguments": '{"city": '}}],
    [{"index": 0, "function": {"arguments": '"Lyon"}'}}],
]  # fmt: skip
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


async def calls_a_tool(path: str, body: dict[str, Any]) -> Any:
    events = [delta(tool_calls=c) for c in CALL_DELTAS] + [delta(finish="tool_calls")]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(delta(no_choices=True, usage=USAGE))
    return events


async def says_hello(path: str, body: dict[str, Any]) -> Any:
    """Two deltas, a finish, usage when asked (as vLLM and OpenAI do)."""
    chat = path.endswith("chat/completions")
    events = (
        [delta("Hello world, "), delta("how are you?"), delta(finish="stop")]
        if chat
        else [text_event("Hello world, "), text_event("how are you?"), text_event("", "stop")]
    )
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(delta(no_choices=True, usage=USAGE))
    return events


async def test_tools_reach_the_upstream_and_the_call_comes_back(door: Door) -> None:
    _, up = await door.openai_node("n1", MODEL)
    up.script = calls_a_tool
    request = {"model": MODEL, "messages": HISTORY, "tools": TOOLS, "tool_choice": "required"}
    status, answer = await door.post("/v1/chat/completions", request)
    assert status == 200, answer
    sent = up.requests[0][1]
    # the whole history as the caller wrote it: tool_calls, tool_call_id, parts, name
    assert sent["messages"] == HISTORY
    assert (sent["tools"], sent["tool_choice"]) == (TOOLS, "required")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
            }
        ],
    }


async def test_streamed_tool_call_deltas_reach_the_sdk(door: Door) -> None:
    openai = pytest.importorskip("openai")
    _, up = await door.openai_node("n1", MODEL)
    up.script = calls_a_tool
    client = openai.AsyncOpenAI(base_url=f"{door.base}/v1", api_key="x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=HISTORY, tools=TOOLS, stream=True
        )
        deltas, finish = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                deltas += choice.delta.tool_calls or []
                finish = choice.finish_reason or finish
    finally:
        await client.close()
    assert finish == "tool_calls"
    assert deltas[0].id == "call_2"
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city": "Lyon"}'


async def test_finish_tool_calls_only_with_calls(door: Door) -> None:
    async def lies(path: str, body: dict[str, Any]) -> Any:
        return [delta("no call here"), delta(finish="tool_calls")]

    _, up = await door.openai_node("n1", MODEL)
    up.script = lies
    status, answer = await door.post("/v1/chat/completions", {"model": MODEL, "messages": USER})
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == "stop"
    events = await door.events(
        "/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True}
    )
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "stop"


async def test_usage_is_the_upstreams(door: Door) -> None:
    _, up = await door.openai_node("n1", MODEL)
    up.script = says_hello
    status, answer = await door.post("/v1/chat/completions", {"model": MODEL, "messages": USER})
    assert status == 200
    assert answer["usage"] == USAGE
    assert up.requests[0][1]["stream_options"] == {"include_usage": True}  # asked upstream
    status, text = await door.post("/v1/completions", {"model": MODEL, "prompt": "hi"})
    assert text["usage"] == USAGE


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_include_usage_ends_with_a_chunk_without_choices(door: Door, path: str) -> None:
    _, up = await door.openai_node("n1", MODEL)
    up.script = says_hello
    body: dict[str, Any] = {"model": MODEL, "stream": True}
    body.update({"messages": USER} if "chat" in path else {"prompt": "hi"})
    events = await door.events(path, {**body, "stream_options": {"include_usage": True}})
    *rest, finish, totals = events
    assert totals == {**totals, "choices": [], "usage": USAGE}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert all(e["usage"] is None for e in [*rest, finish])
    plain = await door.events(path, body)  # not asked: no usage at all
    assert all("usage" not in e for e in plain)
    assert plain[-1]["choices"][0]["finish_reason"] == "stop"


FORWARDED = [
    {"presence_penalty": 0.5, "frequency_penalty": -0.4},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema",
                         "json_schema": {"name": "w", "schema": {"type": "object"}}}},
    {"logprobs": True, "top_logprobs": 2},
    {"logit_bias": {"1234": -100}},
    {"user": "user-42", "seed": 7},
    {"stop": ["\n\n", "END"]},
    {"stop": "END"},
    {"tools": TOOLS, "parallel_tool_calls": False, "tool_choice": "auto"},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": TOOLS},
    {"temperature": 0, "top_p": 0.9},
]  # fmt: skip


@pytest.mark.parametrize("fields", FORWARDED, ids=lambda f: ",".join(f))
async def test_chat_parameters_reach_the_upstream_as_written(
    door: Door, fields: dict[str, Any]
) -> None:
    _, up = await door.openai_node("n1", MODEL)
    status, answer = await door.post(
        "/v1/chat/completions", {"model": MODEL, "messages": USER, **fields}
    )
    assert status == 200, answer
    sent = up.requests[0][1]
    assert {k: sent.get(k) for k in fields} == fields


async def test_max_tokens_and_max_completion_tokens(door: Door) -> None:
    _, up = await door.openai_node("n1", MODEL)
    await door.post("/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 9})
    await door.post(
        "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_completion_tokens": 5}
    )
    assert up.requests[0][1]["max_tokens"] == 9
    assert up.requests[1][1]["max_completion_tokens"] == 5
    assert "max_tokens" not in up.requests[1][1]


async def test_completion_parameters_reach_the_upstream(door: Door) -> None:
    _, up = await door.openai_node("n1", MODEL)
    fields = {"suffix": "!", "logprobs": 2, "echo": False, "best_of": 1, "n": None}
    status, answer = await door.post(
        "/v1/completions", {"model": MODEL, "prompt": ["once upon"], **fields}
    )
    assert status == 200, answer
    sent = up.requests[0][1]
    assert (sent["prompt"], sent["suffix"], sent["logprobs"]) == ("once upon", "!", 2)
    assert "echo" not in sent and "best_of" not in sent and "n" not in sent


async def test_logprobs_come_back(door: Door) -> None:
    lp = [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}]

    async def with_logprobs(path: str, body: dict[str, Any]) -> Any:
        return [delta("Hi", logprobs={"content": lp}), delta(finish="stop")]

    _, up = await door.openai_node("n1", MODEL)
    up.script = with_logprobs
    body = {"model": MODEL, "messages": USER, "logprobs": True}
    _, answer = await door.post("/v1/chat/completions", body)
    assert answer["choices"][0]["logprobs"] == {"content": lp}
    events = await door.events("/v1/chat/completions", {**body, "stream": True})
    assert [e["choices"][0]["logprobs"] for e in events if e["choices"][0].get("logprobs")] == [
        {"content": lp}
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": "abc"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"store": True}, "store"),
        ({"functions": []}, "functions"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"top_k": 3}, "top_k"),  # not an OpenAI parameter
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ],
)  # fmt: skip
async def test_refused_parameters_are_named(door: Door, fields: dict[str, Any], param: str) -> None:
    _, up = await door.openai_node("n1", MODEL)
    status, answer = await door.post(
        "/v1/chat/completions", {"model": MODEL, "messages": USER, **fields}
    )
    assert status == 400, answer
    error = answer["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "bad_request",
        param,
    )
    assert param.split(".")[0].split("[")[0] in error["message"]
    assert up.requests == []  # nothing reached the upstream


async def test_n_null_and_one_are_the_default(door: Door) -> None:
    _, up = await door.openai_node("n1", MODEL)
    for n in (None, 1):
        status, answer = await door.post(
            "/v1/chat/completions", {"model": MODEL, "messages": USER, "n": n}
        )
        assert status == 200, answer
    assert len(up.requests) == 2


async def test_a_chat_travels_once_on_nats(door: Door) -> None:
    """The text in ``input`` (what nodes without a chat format read), the rest of the
    chat in ``params.messages`` with spans to put the text back; the upstream gets the
    chat whole."""
    _, up = await door.openai_node("n1", MODEL)
    nc = await door.fed.client()
    sub = await nc.subscribe("fed.node.n1.infer")  # in-process to its gateway, then here
    await nc.flush()
    big = "x" * 50_000
    messages = [{"role": "system", "content": "be\nbrief"}, {"role": "user", "content": big}]
    status, _ = await door.post("/v1/chat/completions", {"model": MODEL, "messages": messages})
    assert status == 200
    msg = await sub.next_msg(timeout=5)
    while json.loads(msg.data)["request_id"].startswith("canary-"):
        msg = await sub.next_msg(timeout=5)
    request = json.loads(msg.data)["request"]
    assert request["input"] == "be\nbrief\n" + big
    assert request["params"]["messages"] == [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
    ]
    assert request["params"]["input_spans"] == [[0, 0, 8], [1, 9, 9 + len(big)]]
    assert len(msg.data) < len(big) + 1000
    assert up.requests[0][1]["messages"] == messages
