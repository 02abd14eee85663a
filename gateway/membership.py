"""Who is in the federation: heartbeats, leaves, expiry and probes, into the core.

A node joins by heartbeating and nothing else registers it. This module folds each
``fed.heartbeat.<id>`` into the catalog (the subject names the node; a body claiming
another id is rejected, an older incarnation ignored, identical bytes only refresh
liveness), removes nodes that leave or fall silent, gives a restarted node (a new
incarnation) fresh health and a closed circuit, and sends a canary (a real, one-token
inference, as Dynamo's canary health checks do) to every node the health core says is
due: unknown, unhealthy, excluded by a latency limit or idle. A ping only proves the
process lives; a canary proves it can serve, and its success brings the node back.
The service hears about it through two callbacks:
``lost(node_id)`` (work on that node must move) and ``changed()`` (capacity may have
appeared for queued requests).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.breaker import CircuitBreaker
from gateway.catalog import HeartbeatOutcome, ModelCatalog
from gateway.health import HealthChecker
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.connection import RateLimitedLog
from shared.subjects import Subjects

log = logging.getLogger("fedgate.gateway")

_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Membership:
    """Keeps the catalog, health and breakers in step with the nodes' own messages."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        *,
        lost: Callable[[str], Awaitable[None]],
        changed: Callable[[], Awaitable[None]],
        connected: Callable[[], bool],
        spawn: Callable[[Any, str], None],
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self._lost = lost
        self._changed = changed
        self._connected = connected
        self._spawn = spawn
        self._last: dict[str, bytes] = {}
        """Each node's last heartbeat body: an identical one skips decoding."""
        self._noisy = RateLimitedLog(log)
        self._canaries = 0
        self._canary_prefix = secrets.token_hex(4)
        self.share: Callable[..., None] | None = None
        """``SharedOutcomes.record``: tells the other gateways of each canary (None: alone)."""

    async def on_heartbeat(self, msg: Msg) -> None:
        """Fold one ``fed.heartbeat.<id>`` into the catalog."""
        node_id = self.subjects.last_token(msg.subject)
        data = msg.data
        if self._last.get(node_id) == data and self.catalog.touch(node_id):
            return  # the same bytes as last time (an idle node): nothing but liveness
        try:
            hb = m.heartbeat_decoder.decode(data)
        except _UNDECODABLE as exc:
            self._noisy.warning("bad-heartbeat", "bad heartbeat on %s: %s", msg.subject, exc)
            return
        if hb.node_id is not None and hb.node_id != node_id:
            self._noisy.warning(
                "spoofed-heartbeat",
                "heartbeat on %s claims node %r: rejected",
                msg.subject,
                hb.node_id,
            )
            return
        prior = self.catalog.node(node_id)
        outcome = self.catalog.apply_heartbeat(node_id, hb)
        if outcome is HeartbeatOutcome.NEW:
            if self.health.get_cached_health(node_id) is None:
                self.health.register_node(node_id)
                self.breaker.forget(node_id)
        elif outcome is HeartbeatOutcome.REPLACED and not (prior and prior.static):
            # A new process under an old id: fresh health and circuit; its old work is lost.
            self.health.register_node(node_id)
            self.breaker.forget(node_id)
            await self._lost(node_id)
        elif outcome is HeartbeatOutcome.STALE:
            self._noisy.warning("stale-heartbeat", "old incarnation of %s ignored", node_id)
        if outcome is not HeartbeatOutcome.STALE:
            self._last[node_id] = data
        await self._changed()

    async def on_leave(self, msg: Msg) -> None:
        """A node leaving gracefully (``fed.leave.<id>``, body empty or its incarnation)."""
        node_id = self.subjects.last_token(msg.subject)
        incarnation = None
        if msg.data:
            try:
                incarnation = m.leave_decoder.decode(msg.data).incarnation
            except _UNDECODABLE:
                return
        if self.catalog.remove_node(node_id, incarnation):
            await self._forget(node_id)

    def stalled(self, seconds: float) -> None:
        """The gateway could not listen for ``seconds`` (its event loop was blocked): the
        heartbeats of that time wait unread, so it counts as no node's silence."""
        self.catalog.stalled(seconds)

    async def expire(self) -> None:
        """Drop nodes whose heartbeats stopped (3 intervals of listening time)."""
        for node_id in self.catalog.expire():
            await self._forget(node_id)

    async def _forget(self, node_id: str) -> None:
        self._last.pop(node_id, None)
        self.health.deregister_node(node_id)
        await self._lost(node_id)

    async def probe_loop(self, interval_s: float, timeout_s: float = 5.0) -> None:
        """Send a canary to each node due for one (``health.needs_probe()``)."""
        while True:
            # Jittered, so that gateways started together do not probe in step (each
            # tells the others of its canaries: a node gets one, not one per gateway).
            await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
            if not self._connected():
                continue
            for node_id in self.health.needs_probe():
                self._spawn(self._probe(node_id, timeout_s), "probe")

    def canary(self, node_id: str) -> bytes | None:
        """The dispatch body of a node's canary: one token of its first model (None when
        the node is not in the catalog)."""
        node = self.catalog.node(node_id)
        if node is None or not node.models:
            return None
        model = min(node.models)
        caps = node.models[model]
        capability = "generate" if "generate" in caps else min(caps, default="generate")
        self._canaries += 1
        return m.encode(
            m.Dispatch(
                request=m.InferRequest(
                    input="ping", model=model, params={"max_tokens": 1}, capability=capability
                ),
                capability=capability,
                request_id=f"canary-{self._canary_prefix}{self._canaries:x}",
                timeout_ms=5000,
            )
        )

    async def _probe(self, node_id: str, timeout_s: float) -> None:
        body = self.canary(node_id)
        if body is None:
            return
        share = self.share or _ignore
        share("probe", node_id)  # the other gateways leave this node's canary to us
        started = time.monotonic()
        try:
            reply = await self.nc.request(
                self.subjects.node_infer(node_id), body, timeout=timeout_s
            )
        except Exception:
            if self._connected():  # an outage of NATS itself counts against nobody
                self.health.report_probe_failure(node_id)
                share("probe_fail", node_id)
            return
        hdrs = reply.headers or {}
        kind = hdrs.get(h.FED_ERROR)
        if kind is not None or h.ERROR_CODE in hdrs:
            code = hdrs.get(h.ERROR_CODE, "500")
            cls = errors.blame(kind or "", int(code) if code.isdigit() else 500)
            if cls.node_fault:
                self.health.report_probe_failure(node_id)
                share("probe_fail", node_id)
            return  # busy or draining: alive, but nothing measured
        latency = time.monotonic() - started
        self.health.report_probe_success(node_id, latency_s=latency)
        share("probe_ok", node_id, latency)


def _ignore(*_: object) -> None:
    """No other gateway to tell."""
