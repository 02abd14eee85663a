"""Upstream failures end to end: what the node sends, what the gateway does, what the
HTTP caller gets (the table in docs/llm.md).

Two openai-backend nodes serve the model, each in front of its own upstream, and both
upstreams fail the same way: a caller's mistake goes straight back (one upstream call),
a node's fault is retried on the other node and then answered.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.frontdoor.conftest import Door
from tests.llm.upstream import error

MODEL = "errs"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("status", "headers", "http", "code", "calls"),
    [
        (400, {}, 400, "bad_request", 1),  # the caller's: straight back
        (422, {}, 400, "bad_request", 1),
        (500, {}, 502, "upstream_error", 2),  # the engine's: other node, then poison
        (502, {}, 502, "upstream_error", 2),
        (401, {}, 503, "all_unhealthy", 2),  # misconfigured nodes: none can serve it
        (404, {}, 503, "all_unhealthy", 2),
        (429, {"Retry-After": "1"}, 429, "overloaded", 3),  # busy: others, within the budget
    ],
)
async def test_upstream_status_reaches_the_caller(
    door: Door, status: int, headers: dict[str, str], http: int, code: str, calls: int
) -> None:
    async def failing(path: str, body: dict[str, Any]) -> Any:
        return error(status, f"upstream says {status}", **headers)

    _, up1 = await door.openai_node("e1", MODEL)
    _, up2 = await door.openai_node("e2", MODEL)
    up1.script = up2.script = failing
    got, answer = await door.post("/v1/chat/completions", CHAT)
    assert (got, answer["error"]["code"]) == (http, code), answer
    kinds = {400: "invalid_request_error", 429: "rate_limit_error"}
    assert answer["error"]["type"] == kinds.get(http, "server_error")
    # max_retries=2: at most 3 dispatches; a node fault stops at 2 nodes (poison)
    assert 1 <= len(up1.requests) + len(up2.requests) <= calls
    if calls == 1:
        assert len(up1.requests) + len(up2.requests) == 1
    elif http != 429:
        assert (len(up1.requests), len(up2.requests)) == (1, 1)


async def test_one_broken_upstream_is_invisible(door: Door) -> None:
    """A node whose engine fails is retried elsewhere: the caller sees a success."""

    async def failing(path: str, body: dict[str, Any]) -> Any:
        return error(500)

    _, up1 = await door.openai_node("e1", MODEL)
    await door.openai_node("e2", MODEL)
    up1.script = failing
    for _ in range(3):
        got, answer = await door.post("/v1/chat/completions", CHAT)
        assert got == 200, answer
        assert answer["choices"][0]["message"]["content"] == "Hello world!"
