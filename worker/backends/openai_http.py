"""The openai backend's HTTP client: its options and its ``aiohttp`` sessions.

- ``OpenAIOptions``: where the upstream is and how to talk to it;
- ``pooled_session``: the one session of requests (kept-alive connections, timeouts,
  the API key); ``probe_session``: the readiness probes' (a fresh connection each);
- ``encode``: a request body as JSON; ``drain``: the rest of a body after ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import msgspec

DRAIN_S = 0.1
"""How long the rest of a body after ``[DONE]`` is waited for (then the connection is
closed instead of kept alive)."""

encode = msgspec.json.Encoder().encode
"""A request body as JSON bytes."""


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """Where the upstream is and how to talk to it."""

    upstream: str
    """Base URL of the server, with or without the trailing ``/v1``."""
    upstream_model: str | None = None
    """Model name sent upstream (default: the fedgate model, or the upstream's only one)."""
    api_key: str | None = field(default=None, repr=False)
    plain_as_chat: bool = False
    """Send plain prompts to the chat endpoint as one user message."""
    default_max_tokens: int = 256
    """Output budget when a request gives no ``params.max_tokens``."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    """Longest silence from the upstream (time to first token included)."""
    ready_ttl_s: float = 1.0
    """How long a readiness probe's answer is reused."""
    probe_timeout_s: float = 0.5
    """Timeout of a readiness probe (it runs before a heartbeat)."""
    stream_usage: bool = True
    """Ask for usage with ``stream_options.include_usage`` (off for a server refusing it)."""
    max_connections: int = 256
    """Most connections open to the upstream: a ceiling above the node's capacity (which
    bounds the requests in flight), so that a request never waits for one."""


def pooled_session(opts: OpenAIOptions) -> aiohttp.ClientSession:
    """The session of requests (to create in the event loop): kept-alive connections, a
    connect timeout, and a read timeout that is the longest silence between two reads."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=opts.max_connections),
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=opts.read_timeout_s,  # waiting for a pooled connection, or a new one
            sock_connect=opts.connect_timeout_s,
            sock_read=opts.read_timeout_s,
        ),
        headers={
            "Authorization": f"Bearer {opts.api_key or 'EMPTY'}",  # unchecked without auth
            "Content-Type": "application/json",
        },
    )


def probe_session(opts: OpenAIOptions) -> aiohttp.ClientSession:
    """The readiness probes' session: a fresh connection each time (a kept-alive one the
    upstream dropped proves nothing), every timeout ``probe_timeout_s``."""
    timeout = opts.probe_timeout_s
    headers = {"Connection": "close"}
    if opts.api_key:
        headers["Authorization"] = f"Bearer {opts.api_key}"
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        ),
        headers=headers,
    )


async def drain(resp: aiohttp.ClientResponse) -> None:
    """Read the rest of a body after ``[DONE]`` (most often nothing: the end of the
    chunked body came with it), so that its connection goes back to the pool."""
    if resp.content.at_eof():
        return
    try:
        async with asyncio.timeout(DRAIN_S):
            await resp.content.read()
    except (TimeoutError, aiohttp.ClientError):
        pass  # the connection is closed instead; the output is complete
