"""A scripted OpenAI-compatible upstream on loopback (aiohttp), for the openai backend.

It records every request body and answers what its ``script`` says: a list of events
(dicts sent as ``data: <json>`` frames then ``data: [DONE]``), or raw byte frames
written as they are (to try SSE framings), or an ``aiohttp`` response (errors).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Script = Callable[[str, dict[str, Any]], Awaitable[Any]]


def delta(
    content: str | None = None,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, int] | None = None,
    *,
    no_choices: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk event."""
    d: dict[str, Any] = {}
    if content is not None:
        d["content"] = content
    if tool_calls is not None:
        d["tool_calls"] = tool_calls
    choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    event: dict[str, Any] = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "model": "up-model",
        "choices": [] if no_choices else [choice],
    }
    if usage is not None:
        event["usage"] = usage
    return event


def text_event(text: str, finish: str | None = None) -> dict[str, Any]:
    """One text_completion event."""
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


async def words(path: str, body: dict[str, Any]) -> Any:
    """The default script: three pieces, a finish, usage when asked."""
    chat = path.endswith("chat/completions")
    pieces = ["Hello", " world", "!"]
    events = [delta(p) if chat else text_event(p) for p in pieces]
    events.append(delta(finish="length") if chat else text_event("", "length"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(delta(no_choices=True, usage={"prompt_tokens": 5, "completion_tokens": 3}))
    return events


class Upstream:
    """The fake server; ``script`` may be replaced at any time."""

    def __init__(self, script: Script = words, models: tuple[str, ...] = ("upstream-only",)):
        self.script = script
        self.models = models
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.models_status = 200
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.post("/v1/completions", self._post),
                web.post("/v1/chat/completions", self._post),
                web.post("/v1/embeddings", self._embed),
            ]
        )
        self.runner = web.AppRunner(app)
        self.url = ""
        self.port = 0

    async def start(self, port: int = 0) -> Upstream:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model"} for m in self.models]
        return web.json_response({"object": "list", "data": data}, status=self.models_status)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        out = await self.script(request.path, body)
        if isinstance(out, web.StreamResponse):
            return out
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            if out and isinstance(out[0], bytes):
                for part in out:
                    await resp.write(part)
                    await asyncio.sleep(0)
            else:
                for ev in out:
                    await resp.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass
        return resp

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        out = await self.script(request.path, body)
        if isinstance(out, web.StreamResponse):
            return out
        return web.json_response(
            {"data": [{"embedding": [0.5, -0.25]}], "usage": {"prompt_tokens": 3}}
        )


def error(status: int, message: str = "nope", **headers: str) -> web.Response:
    """An OpenAI-style error answer."""
    return web.json_response({"error": {"message": message}}, status=status, headers=headers)
