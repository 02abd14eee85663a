"""Fair share across gateways: charges, waiting tenants and holds on ``fed.fair``.

Each gateway tells the others, in one batch (``FairBatch``, JSON):

- ``charges``: per tenant, the service it charged since its last batch (weighted
  tokens: estimates at dispatch, corrections when requests end) and the tenant's
  virtual counter there. A receiver adds the service (divided by the tenant's weight)
  and keeps the larger of the two counters, so a tenant heavy on gateway 1 is behind
  on gateway 2 too, and a lift on one holds on all (gateway/core/fairqueue.py);
- ``waiting``: the tenants waiting in its capacity queue, per (capability, model), with
  how long each head has waited: a receiver holds back its own flights of a tenant
  ahead of one of them (and, for a slot it saw freed elsewhere, of the same tenant when
  that head waited longer);
- ``holds``: the slots its own dispatches hold, per node: a receiver counts them in
  the node's in-flight (gateway/core/remote.py), so a node another gateway filled is full
  here too and requests wait in the queue, where fair share orders them.

How fresh: a batch goes out at once when a dispatch fills a node or a slot freed here
is left to another gateway's tenant; the loop ticks every ``tick_s`` (20 ms) and
publishes when the holds changed or something waits here, else charges at most every
``charges_s`` (100 ms), and holds again every ``keepalive_s`` (0.5 s) while there are
some; a receiver believes a waiting list for 0.5 s and holds for 2 s. At-most-once
(core NATS, like heartbeats): a lost batch is corrected by the next. A batch from this
gateway is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.clock import Clock
from gateway.core.fairqueue import FairQueue
from gateway.core.remote import RemoteHolds
from gateway.fleet import Fleet
from gateway.nodeinfo import note_in_flight
from shared.messages import Base

log = logging.getLogger("fedgate.gateway")


IDLE_TICK_S = 1.0
"""The loop's pace while the gateway is idle (no slot held, nothing queued or to report)."""
IDLE_STEP_S = 0.1
"""While idle, how often the loop looks whether a dispatch woke it."""


class FairCharge(msgspec.Struct, frozen=True, array_like=True):
    """``[tenant, service, counter]``: weighted tokens charged since the last batch (may
    be negative: corrections), and the tenant's virtual counter at the sender."""

    tenant: str
    service: float
    counter: float


class FairWaiting(msgspec.Struct, frozen=True, array_like=True):
    """``[tenant, capability, model, waited_s]``: a tenant waiting at the sender for those
    nodes, its head for ``waited_s`` seconds."""

    tenant: str
    capability: str
    model: str = ""
    waited_s: float = 0.0


class FairBatch(Base, frozen=True, kw_only=True):
    """What a gateway publishes on ``fed.fair`` (docs/protocol.md)."""

    gateway_id: str
    charges: list[FairCharge] = msgspec.field(default_factory=list)
    waiting: list[FairWaiting] = msgspec.field(default_factory=list)
    holds: dict[str, int] = msgspec.field(default_factory=dict)
    """Node -> slots its dispatches hold now (the whole figure, not a change)."""


_decode = msgspec.json.Decoder(FairBatch).decode
_encode = msgspec.json.Encoder().encode


class SharedFair:
    """Publishes this gateway's fair-share figures and applies the other gateways'.

    ``drain()`` tries the capacity queue again (``Engine.capacity_changed``)."""

    def __init__(
        self,
        nc: Client,
        subject: str,
        gateway_id: str,
        queue: FairQueue,
        fleet: Fleet,
        drain: Callable[[], Coroutine[Any, Any, None]],
        spawn: Callable[[Coroutine[Any, Any, Any], str], None],
        clock: Clock,
        *,
        tick_s: float = 0.02,
        charges_s: float = 0.1,
        keepalive_s: float = 0.5,
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.gateway_id = gateway_id
        self.queue = queue
        self.fleet = fleet
        self.drain = drain
        self.spawn = spawn
        self.clock = clock
        self.tick_s = tick_s
        self.charges_s = charges_s
        self.keepalive_s = keepalive_s
        self.holds = RemoteHolds()
        self.applied = 0
        """Batches from other gateways applied here (a figure for tests)."""
        self._sent_holds: dict[str, int] = {}
        self._sent_at = 0.0
        self._draining = False
        self._flushing = False
        self._woken = False
        """Set by a dispatch: the loop leaves its idle pace."""
        fleet.on_hold = self._held
        queue.on_yield = self._took

    # -- this gateway's ----------------------------------------------------------------------

    async def run(self) -> None:
        """Publish, expire and tidy every ``tick_s`` until cancelled; every ``IDLE_TICK_S``
        while this gateway holds no slot, queues nothing and has nothing to report (a
        dispatch or a queued request wakes it within ``IDLE_STEP_S``): an idle gateway
        does not run the loop 50 times a second."""
        last_tidy = last_kick = self.clock()
        while True:
            queue = self.queue
            if self.fleet.held or queue or queue.unreported or queue.announced:
                await asyncio.sleep(self.tick_s)
            else:  # idle: a cheap look every IDLE_STEP_S, the loop's work every IDLE_TICK_S
                self._woken = False
                for _ in range(round(IDLE_TICK_S / IDLE_STEP_S)):
                    await asyncio.sleep(IDLE_STEP_S)
                    if self._woken or self.fleet.held or queue or queue.unreported:
                        break
            now = self.clock()
            try:
                await self.flush(now)
                self._reconcile(self.holds.expire(now))
                if now - last_tidy >= 1.0:
                    last_tidy = now
                    self.queue.tidy(now)
                    if self.queue and log.isEnabledFor(logging.DEBUG):
                        log.debug("fair share: waiting %s", self._snapshot())
                if self.queue and now - last_kick >= 0.1:  # a hold back may have lapsed
                    last_kick = now
                    self._kick()
            except Exception:
                log.exception("fair share error")

    async def flush(self, now: float) -> None:
        """Publish a batch if anything is due."""
        held, queue, since = self.fleet.held, self.queue, now - self._sent_at
        due = held != self._sent_holds or bool(queue) or queue.announced
        if not due and queue.unreported:
            due = since >= self.charges_s
        if not due and held:
            due = since >= self.keepalive_s
        if not due or not self.nc.is_connected:
            return
        report = queue.report(now)
        charges, waiting = report if report is not None else ([], [])
        self._sent_holds, self._sent_at = dict(held), now
        batch = FairBatch(
            gateway_id=self.gateway_id,
            charges=[FairCharge(*c) for c in charges],
            waiting=[FairWaiting(t, c, m, round(s, 3)) for t, c, m, s in waiting],
            holds=self._sent_holds,
        )
        await self.nc.publish(self.subject, _encode(batch))

    # -- the other gateways' -----------------------------------------------------------------

    async def subscribe(self) -> Subscription:
        """Subscribe to every gateway's batches (this one's are skipped)."""
        return await self.nc.subscribe(self.subject, cb=self.on_batch)

    async def on_batch(self, msg: Msg) -> None:
        """Apply one batch from another gateway; a malformed one is dropped (logged)."""
        try:
            batch = _decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("dropped a malformed fed.fair batch: %s", exc)
            return
        if batch.gateway_id != self.gateway_id:
            self.apply(batch)

    def apply(self, batch: FairBatch) -> None:
        """Another gateway's figures, here; the queue is tried again."""
        now = self.clock()
        charges = [(c.tenant, c.service, c.counter) for c in batch.charges]
        waiting = [(w.tenant, w.capability, w.model, w.waited_s) for w in batch.waiting]
        self.queue.apply(batch.gateway_id, charges, waiting, now)
        self._reconcile(self.holds.update(batch.gateway_id, batch.holds, now))
        self.applied += 1
        if self.queue:
            self._kick()

    # -- inside ------------------------------------------------------------------------------

    def _reconcile(self, node_ids: set[str]) -> None:
        """Each node's in-flight count here: this gateway's holds plus the others'."""
        catalog, own = self.fleet.catalog, self.fleet.held
        for node_id in node_ids:
            node = catalog.node(node_id)
            if node is not None:
                target = own.get(node_id, 0) + self.holds.held(node_id)
                catalog.add_in_flight(node_id, target - node.local_in_flight)
                # the others' part is counted now
                note_in_flight(node, node.in_flight, heartbeat=False)

    def _held(self, node_id: str) -> None:
        """A dispatch took a slot of ``node_id``: if that filled it, the others hear of it
        at once (else at the next tick: no publish per request on a fleet with room)."""
        self._woken = True
        node = self.fleet.catalog.node(node_id)
        if node is not None and node.local_in_flight >= node.capacity:
            self._took()

    def _took(self) -> None:
        """A dispatch filled a node, or a slot freed here was left for another gateway's
        tenant: the others hear of it at once (any other slot freed waits for the tick:
        the drain that follows a release usually takes it again)."""
        if not self._flushing:
            self._flushing = True
            self.spawn(self._flush_now(), "fair-flush")

    async def _flush_now(self) -> None:
        self._flushing = False
        if self.fleet.held != self._sent_holds:
            await self.flush(self.clock())

    def _kick(self) -> None:
        if not self._draining:
            self._draining = True
            self.spawn(self._drain(), "fair-drain")

    async def _drain(self) -> None:
        self._draining = False
        await self.drain()

    def _snapshot(self) -> str:
        counters = {n: round(t.counter) for n, t in self.queue.tenants.items()}
        return f"{self.queue.waiting()}, counters {counters}"
