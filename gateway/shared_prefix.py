"""Shared prefix index: every gateway learns every prompt any gateway routed.

After each routed attempt ``Fleet.route`` records the prompt's block hashes in this
gateway's ``PrefixIndex`` and hands them here; they are published as one
``ObservedPrefix`` (gateway/prefix.py: MessagePack ``{node_id, blocks, at_s, origin}``)
on ``fed.prefix.<node_id>``, a plain subject every gateway subscribes to
(``fed.prefix.*``, not the queue group). Each gateway applies the others' events to its
own index (``apply_observed``: recorded when received; dropped when older than the TTL
by the receiver's wall clock, or for a node not in its catalog), so all gateways hold the
same index and a conversation whose turns reach different gateways still goes back to
the node holding its prefix (docs/routing.md, "Engine signals and prefix caches").

Cost on the request path: one tuple appended to a buffer. Buffered events are published
every ``flush_s`` (10 ms), like gateway/shared_outcomes.py; the same prompt routed to the
same node twice in one batch is sent once. At-most-once, like heartbeats: a gateway that
misses an event routes that prompt's next turn without it (a cache miss, not an error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.catalog import ModelCatalog
from gateway.clock import Clock
from gateway.prefix import MAX_EVENT_BLOCKS, ObservedPrefix, decode_observed, encode_observed
from gateway.prefix_index import PrefixIndex, apply_observed
from shared.subjects import Subjects

log = logging.getLogger("fedgate.gateway")


class SharedPrefixes:
    """Publishes this gateway's routed prompts and applies the other gateways'."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        gateway_id: str,
        index: PrefixIndex,
        catalog: ModelCatalog,
        spawn: Callable[[Coroutine[Any, Any, Any], str], None],
        clock: Clock,
        *,
        wall: Callable[[], float] = time.time,
        flush_s: float = 0.01,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.gateway_id = gateway_id
        self.index = index
        self.catalog = catalog
        self.spawn = spawn
        self.clock = clock
        self.wall = wall
        self.flush_s = flush_s
        self.applied = 0
        """Events from other gateways applied here (a figure for tests and stats)."""
        self._buffer: list[tuple[str, list[int], float]] = []
        self._scheduled = False

    # -- this gateway's prompts -------------------------------------------------------

    def record(self, node_id: str, blocks: list[int]) -> None:
        """Queue one routed prompt (its block hashes) for the other gateways."""
        self._buffer.append((node_id, blocks, self.wall()))
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a pure unit test): kept until flush()
            return
        self._scheduled = True
        loop.call_later(self.flush_s, self._kick)

    def _kick(self) -> None:
        self._scheduled = False
        if self._buffer:
            self.spawn(self.flush(), "prefixes")

    async def flush(self) -> None:
        """Publish what is buffered (one message per (node, prompt), duplicates once)."""
        events, self._buffer = self._buffer, []
        if not events or not self.nc.is_connected:
            return
        sent: set[tuple[str, int, int]] = set()
        for node_id, blocks, at_s in events:
            key = (node_id, len(blocks), blocks[-1] if blocks else 0)
            if key in sent:
                continue
            sent.add(key)
            event = ObservedPrefix(
                node_id=node_id, blocks=blocks[:MAX_EVENT_BLOCKS], at_s=at_s,
                origin=self.gateway_id,
            )  # fmt: skip
            await self.nc.publish(self.subjects.prefix(node_id), encode_observed(event))

    # -- the other gateways' ----------------------------------------------------------

    async def subscribe(self) -> Subscription:
        """Subscribe to every gateway's routed prompts (this one's are skipped)."""
        return await self.nc.subscribe(self.subjects.prefix_all, cb=self.on_event)

    async def on_event(self, msg: Msg) -> None:
        """Apply one event from another gateway; a malformed one is dropped (logged)."""
        try:
            event = decode_observed(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("dropped a malformed fed.prefix event: %s", exc)
            return
        if event.origin == self.gateway_id:
            return
        if event.node_id != self.subjects.last_token(msg.subject):
            return  # the subject names the node: a mismatch is not ours to believe
        self.apply(event)

    def apply(self, event: ObservedPrefix) -> bool:
        """Record another gateway's event (False: dropped, too old or unknown node)."""
        if self.catalog.node(event.node_id) is None:
            return False  # gone (or not yet known): must not come back through a late event
        if apply_observed(self.index, event, self.clock(), self.wall()):
            self.applied += 1
            return True
        return False
