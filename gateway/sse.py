"""Relaying a NATS stream to an HTTP client as OpenAI server-sent events.

The HTTP status is decided by the first chunk: an error before any output is still a
plain OpenAI error with its status; once the headers are out, an error travels in the
stream as an ``{"error": {...}}`` event followed by ``[DONE]``, as OpenAI does. The
stream ends with the ``finish_reason`` event (fedgate's figures in its ``fedgate``
object), the usage event when asked, then ``[DONE]``. A client that goes away cancels
the handler, and with it the request (the engine cancels the node's job).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway.local import LocalStream
from gateway.openai_errors import error_type, fed_error_response
from gateway.openai_reply import DONE, Reply, event
from shared import errors
from shared import headers as h

log = logging.getLogger("fedgate.http")

REQUEST_ID = "X-Fed-Request-Id"


def error_event(status: int, message: str, code: str) -> dict[str, Any]:
    """An OpenAI error object, as a stream's event."""
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}


async def relay(
    request: web.Request,
    stream: LocalStream,
    reply: Reply,
    request_id: str,
    model: str | None,
    echo: dict[str, str],
) -> web.StreamResponse:
    """Answer ``request`` with the events of ``stream`` (an open ``LocalClient`` stream)."""
    chunks = aiter(stream)
    try:  # wait for the first chunk: an early error is still an HTTP status
        first = await anext(chunks, None)
    except errors.FedError as exc:
        return fed_error_response(exc, model)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            REQUEST_ID: request_id,
            **echo,
        }
    )
    await response.prepare(request)
    if reply.chat:
        await response.write(event(reply.start()))
    try:
        if first is not None:
            await response.write(event(reply.delta(first)))
            async for chunk in chunks:
                await response.write(event(reply.delta(chunk)))
    except errors.FedError as exc:  # after output: the error travels in the stream
        await response.write(event(error_event(exc.code, exc.message, exc.kind)))
        await response.write(DONE)
        return response
    except ConnectionResetError:  # the client went away mid-write: nobody to answer
        log.info("client went away: stream %s", request_id)
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # our bug, after the headers: still an OpenAI error
        log.exception("front door failed mid-stream on %s", request_id)
        await response.write(event(error_event(500, f"internal error: {exc}", "internal")))
        await response.write(DONE)
        return response
    figures = {
        "served_by": stream.served_by,
        "attempts": stream.attempts,
        "tokens": stream.tokens,
        "request_id": request_id,
    }
    await response.write(event(reply.finish(stream.finish_reason or "stop", figures)))
    if reply.include_usage:
        prompt = stream.headers.get(h.PROMPT_TOKENS, "")
        prompt_tokens = int(prompt) if prompt.isdigit() else 0
        await response.write(event(reply.usage_chunk(prompt_tokens, stream.tokens)))
    await response.write(DONE)
    await response.write_eof()
    return response
