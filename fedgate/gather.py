"""Asking every gateway at once: the inspection subjects ``fed.gateway.*``.

Gateways answer ``fed.gateway.nodes``, ``stats`` and ``route.<capability>`` outside any
queue group, so one publish reaches all of them; the replies that arrive within a short
window after the first one are gathered. Used by ``nodes``/``stats``/``route``, by the
dashboard and by ``fedgate up`` (this is all the CLI knows of a gateway: NATS).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from shared import errors
from shared import headers as h
from shared.config import NatsConfig

if TYPE_CHECKING:  # nats (and aiohttp under it) is imported when a command connects
    from nats.aio.client import Client
    from nats.aio.msg import Msg

GATHER_WINDOW_S = 0.3
"""After the first gateway answers, how long to wait for the others' answers."""


async def gather_on(
    nc: Client,
    subject: str,
    body: bytes = b"",
    window_s: float = GATHER_WINDOW_S,
    timeout_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Ask every gateway: the replies arriving within ``window_s`` of the first one.

    Nobody listening comes back at once as a no-responders status (an empty list).
    Replies are sorted by gateway id; an error reply becomes ``{"error", "message"}``.
    """
    replies: list[dict[str, Any]] = []
    first = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        first.set()
        if msg.headers and msg.headers.get(h.NATS_STATUS) == "503":
            return
        err = errors.from_headers(msg.headers)
        if err is not None:
            replies.append({"error": err.kind, "message": err.message})
        elif msg.data:
            replies.append(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(subject, body, reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(first.wait(), timeout_s)
        except TimeoutError:
            return []
        if replies:
            await asyncio.sleep(window_s)  # the gathering window: other gateways' answers
    finally:
        await sub.unsubscribe()
    return sorted(replies, key=lambda r: str(r.get("gateway", "")))


async def gather(cfg: NatsConfig, subject: str, body: bytes = b"") -> list[dict[str, Any]]:
    """``gather_on`` over a connection of its own (failing fast when NATS is down)."""
    from shared.connection import connect

    nc = await connect(cfg)
    try:
        return await gather_on(nc, subject, body)
    finally:
        await nc.close()
