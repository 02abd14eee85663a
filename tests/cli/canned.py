"""Gateways that answer the control subjects with replies recorded from real ones.

``data/replies.json`` holds what two real gateways (gw-a, gw-b) with three nodes sent
on ``fed.gateway.nodes``, ``stats`` and ``route.*`` (body and headers, error replies
included); ``data/golden/`` what ``fedgate ... --json`` printed for them before the CLI
moved to click and rich. Replaying them makes the CLI's output exactly reproducible.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from tests.helpers import connect

DATA = Path(__file__).parent / "data"
REPLIES: dict[str, Any] = json.loads((DATA / "replies.json").read_text())
"""Case name -> {"subject", "replies": [{"data", "headers"}, ...]}."""

GOLDEN_CASES: dict[str, list[str]] = {
    "nodes": ["nodes", "--json"],
    "stats": ["stats", "--json"],
    "route": ["route", "generate", "hi", "--json"],
    "route_restricted": ["route", "generate", "hi", "--privacy", "restricted", "--json"],
    "route_unknown": ["route", "nope", "--json"],
    "route_bad": ["route", "generate", "--json"],
}
"""Case name -> the fedgate command whose output ``data/golden/<case>.out`` pins."""


@asynccontextmanager
async def canned_gateways(url: str, case: str) -> AsyncIterator[None]:
    """Answer ``case``'s subject on ``url`` with every recorded reply, as gateways would."""
    recorded = REPLIES[case]
    nc = await connect(url)

    async def answer(msg: Msg) -> None:
        for reply in recorded["replies"]:
            await nc.publish(msg.reply, reply["data"].encode(), headers=reply["headers"] or None)

    try:
        await nc.subscribe(recorded["subject"], cb=answer)
        await nc.flush()
        yield
    finally:
        await nc.close()
