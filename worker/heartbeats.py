"""Heartbeats of a worker node: what it says about itself, and the loop that says it.

``Heartbeats`` is a mixin of ``worker.node.Node`` (it reads the node's attributes): one
``m.Heartbeat`` every ``heartbeat_interval_s`` seconds on ``fed.heartbeat.<node_id>``
(``fed``: the default internal root), the backend's optional ``ready()`` and
``engine_load()`` hooks asked first, with the node's smoothed time to first token (ms)
and output rate (tokens/s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from shared import messages as m
from worker.backends.load import Load

if TYPE_CHECKING:
    from nats.aio.client import Client

    from shared.subjects import Subjects
    from worker.backends.base import Backend
    from worker.signals import Signals

log = logging.getLogger("fedgate.worker")


class Heartbeats:
    """The heartbeat half of a node (mixed into ``worker.node.Node``)."""

    nc: Client
    backend: Backend
    subjects: Subjects
    signals: Signals
    node_id: str
    incarnation: str
    region: str
    capacity: int
    privacy: m.Privacy
    cost: float
    gpu: bool
    labels: dict[str, str]
    draining: bool
    backend_ready: bool
    heartbeat_interval_s: float
    started_ms: int
    _jobs: dict[str, asyncio.Task[None]]
    _model_infos: tuple[m.ModelInfo, ...]
    _ttft_ms: float | None
    _tokens_per_s: float | None

    def heartbeat(self) -> m.Heartbeat:
        """The heartbeat describing this node now."""
        return m.Heartbeat(
            node_id=self.node_id,
            incarnation=self.incarnation,
            region=self.region,
            models=self._model_infos,
            capacity=self.capacity,
            in_flight=len(self._jobs),
            privacy=self.privacy,
            cost=self.cost,
            gpu=self.gpu,
            labels=self.labels,
            draining=self.draining or not self.backend_ready,
            interval_ms=max(10, int(self.heartbeat_interval_s * 1000)),
            ttft_ms=self._ttft_ms,
            tokens_per_s=self._tokens_per_s,
            started_ms=self.started_ms,
            engine=self.signals.report(len(self._jobs), self._engine_load()),
        )

    def _engine_load(self) -> Load | None:
        """The backend's optional ``engine_load()`` hook (its own queue), or None."""
        hook = getattr(self.backend, "engine_load", None)
        if hook is None:
            return None
        try:
            load = hook()
        except Exception as exc:  # a broken hook falls back to our job count
            log.debug("backend engine_load failed: %s", exc)
            return None
        return load if isinstance(load, Load) else None

    async def publish_heartbeat(self) -> None:
        """Publish one heartbeat now (asking the backend whether it is ready first)."""
        await self._check_backend()
        await self.nc.publish(self.subjects.heartbeat(self.node_id), m.encode(self.heartbeat()))

    async def _check_backend(self) -> None:
        """Ask the backend's optional ``ready()`` hook (cached by the backend itself)."""
        ready = getattr(self.backend, "ready", None)
        if ready is None:
            return
        try:
            self.backend_ready = bool(await ready())
        except Exception as exc:  # a broken hook means not ready, never a dead heartbeat
            log.debug("backend readiness check failed: %s", exc)
            self.backend_ready = False

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.publish_heartbeat()
            except Exception as exc:  # disconnected: nats-py buffers or raises; keep going
                log.debug("heartbeat not sent: %s", exc)
