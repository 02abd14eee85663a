"""A worker node: joins by subscribing to its inbox and heartbeating, serves dispatches.

Lifecycle: ``start()`` subscribes (inbox, cancel, ping), publishes the first heartbeat
and starts the heartbeat loop; ``stop()`` drains in three steps: stop intake (a
``draining`` heartbeat, inbox unsubscribed), wait up to ``drain_timeout_s`` for
in-flight jobs, end the rest with an explicit error; then publish ``leave`` and drain
the connection. Every job is owned by the node and bounded by ``capacity``.

Here: the lifecycle, the control subjects and the intake of dispatches. The heartbeat
is ``worker.heartbeats.Heartbeats``, serving a job ``worker.jobs.JobRunner``; both are
mixins of ``Node``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.subjects import Subjects
from worker.backends.base import Backend, Job, chat_from
from worker.engine_metrics import Scraper
from worker.heartbeats import Heartbeats
from worker.jobs import JobRunner
from worker.signals import Signals

log = logging.getLogger("fedgate.worker")

VERSION = "0.1.0"


class Node(Heartbeats, JobRunner):
    """One node of the federation serving ``backend`` under ``node_id``."""

    def __init__(
        self,
        nc: Client,
        backend: Backend,
        *,
        node_id: str,
        region: str = "default",
        models: dict[str, tuple[str, ...]] | None = None,
        capacity: int = 4,
        privacy: m.Privacy = m.Privacy.INTERNAL,
        cost: float = 0.5,
        gpu: bool = False,
        labels: dict[str, str] | None = None,
        heartbeat_interval_s: float = 1.0,
        drain_timeout_s: float = 10.0,
        subjects: Subjects | None = None,
        stream_interval_ms: int = 0,
        engine_metrics_url: str | None = None,
        engine_metrics_interval_s: float = 1.0,
        engine_metrics_timeout_s: float = 0.5,
    ) -> None:
        self.nc = nc
        self.backend = backend
        self.node_id = node_id
        self.region = region
        self.models = models or {"synthetic": ("generate",)}
        self.capacity = capacity
        self.privacy = privacy
        self.cost = cost
        self.gpu = gpu
        self.labels = labels or {}
        self.heartbeat_interval_s = heartbeat_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.subjects = subjects or Subjects()
        self.stream_interval_s = stream_interval_ms / 1000
        self.incarnation = secrets.token_hex(8)
        self.started_ms = time.time_ns() // 1_000_000
        self.draining = False
        self.backend_ready = True
        """False while the backend's ``ready()`` hook says no (e.g. its upstream is down)."""
        self.served = 0
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._probes: dict[str, str] = {}
        """Job key -> where to tell its gateway that the caller is gone (direct replies)."""
        self._subs: list[Subscription] = []
        self._inbox_sub: Subscription | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._gone_prefix = nc.new_inbox()
        self._ttft_ms: float | None = None
        self._tokens_per_s: float | None = None
        self._service: Any = None
        self._stopped = asyncio.Event()
        self._model_infos = tuple(
            m.ModelInfo(model=name, capabilities=tuple(caps)) for name, caps in self.models.items()
        )
        self._capability_model = {cap: name for name, caps in self.models.items() for cap in caps}
        scraper = None
        if engine_metrics_url:
            scraper = Scraper(
                engine_metrics_url,
                interval_s=engine_metrics_interval_s,
                timeout_s=engine_metrics_timeout_s,
            )
        self.signals = Signals(scraper)
        """The heartbeat's ``engine``: the engine's /metrics (if any) or our own counters."""

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, announce ourselves and start heartbeating."""
        s = self.subjects
        self._inbox_sub = await self.nc.subscribe(s.node_infer(self.node_id), cb=self._on_dispatch)
        self._subs += [
            await self.nc.subscribe(s.node_cancel(self.node_id), cb=self._on_cancel),
            await self.nc.subscribe(s.node_ping(self.node_id), cb=self._on_ping),
            await self.nc.subscribe(self._gone_prefix + ".*", cb=self._on_gone),
        ]
        await self._start_discovery()
        if self.signals.scraper is not None:
            self.signals.scraper.start()
        await self.nc.flush()
        await self.publish_heartbeat()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")

    async def _start_discovery(self) -> None:
        try:
            from nats import micro

            self._service = await micro.add_service(
                self.nc,
                name="fedgate-worker",
                version=VERSION,
                description=f"fedgate worker node {self.node_id} ({self.region})",
                metadata={"node_id": self.node_id, "region": self.region},
            )
        except Exception as exc:  # discovery is optional; serving is not
            log.warning("service discovery ($SRV) unavailable: %s", exc)

    async def stop(self) -> None:
        """Graceful stop: intake off, wait for jobs, end the rest, leave, drain."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.draining = True
        if self._inbox_sub is not None:
            with contextlib.suppress(Exception):
                await self._inbox_sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.publish_heartbeat()
        if self._jobs:
            _, pending = await asyncio.wait(list(self._jobs.values()), timeout=self.drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        if self.signals.scraper is not None:
            await self.signals.scraper.stop()
        with contextlib.suppress(Exception):
            if self._service is not None:
                await self._service.stop()
        close = getattr(self.backend, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        with contextlib.suppress(Exception):
            await self.nc.publish(
                self.subjects.leave(self.node_id),
                m.encode(m.Leave(incarnation=self.incarnation)),
            )
            await self.nc.flush(timeout=2)

    async def wait_stopped(self) -> None:
        """Block until ``stop()`` has been called."""
        await self._stopped.wait()

    # -- control -------------------------------------------------------------------

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, b"{}")

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = m.cancel_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        task = self._jobs.get(cancel.job_id or cancel.request_id)
        if task is not None:
            task.cancel()

    async def _on_gone(self, msg: Msg) -> None:
        # A 503 status on our "gone" inbox: who we stream to has disappeared (the gateway;
        # with a direct reply, the caller: its gateway is told so on the probe subject).
        if msg.headers and msg.headers.get(h.NATS_STATUS) == "503":
            key = msg.subject.rpartition(".")[2]
            probe = self._probes.pop(key, None)
            if probe:
                with contextlib.suppress(Exception):
                    await self.nc.publish(probe, b"", headers={h.NATS_STATUS: "503"})
            task = self._jobs.get(key)
            if task is not None:
                task.cancel()

    # -- dispatches ----------------------------------------------------------------

    async def _on_dispatch(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            dispatch = m.dispatch_decoder.decode(msg.data or b"{}")
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            await self._error(msg.reply, errors.BadRequest(f"bad dispatch: {exc}"))
            return
        request_id = dispatch.request_id or dispatch.request.request_id or secrets.token_hex(8)
        if self.draining or not self.backend_ready:
            why = "draining" if self.draining else "not ready (its engine is unreachable)"
            await self._error(msg.reply, errors.NodeDraining(f"{self.node_id} is {why}"))
            return
        key = dispatch.job_id or request_id  # what names the job here (two tenants may
        previous = self._jobs.pop(key, None)  # share a request id; a job id is unique)
        if previous is not None:
            # A gateway re-dispatches a request id only after giving up on the earlier
            # dispatch (or another gateway took the request over): the newest one wins.
            previous.cancel()
        if len(self._jobs) >= self.capacity:
            await self._error(msg.reply, errors.Overloaded(f"{self.node_id} is at capacity"))
            return
        capability = dispatch.capability or "generate"
        model = dispatch.request.model or self._capability_model.get(capability)
        if model is None or model not in self.models:
            await self._error(
                msg.reply, errors.NoCapacity(capability, f"{self.node_id} does not serve that")
            )
            return
        resume = dispatch.resume
        try:  # a chat's text travels once, in input: put it back into the messages
            request = chat_from(dispatch.request)
        except errors.BadRequest as exc:
            await self._error(msg.reply, exc)
            return
        job = Job(
            capability=capability,
            model=model,
            request=request,
            resume_text=resume.text if resume else "",
            resume_tokens=resume.tokens if resume else 0,
        )
        timeout_s = (dispatch.timeout_ms or dispatch.request.timeout_ms or 300_000) / 1000
        span = None
        if telemetry.enabled:
            span = telemetry.start(
                "process infer",
                kind=telemetry.CONSUMER,
                headers=msg.headers,
                attributes={
                    **telemetry.messaging(msg.subject, "process"),
                    "fed.node_id": self.node_id,
                    "fed.region": self.region,
                    "fed.attempt": dispatch.attempt,
                    "fed.request_id": request_id,
                },
            )
        task = asyncio.create_task(
            self._run(
                job, request_id, dispatch.attempt, msg.reply, timeout_s, span, key, dispatch.direct
            ),
            name=f"job-{key}",
        )
        self._jobs[key] = task
        if dispatch.direct is not None and dispatch.direct.probe:
            self._probes[key] = dispatch.direct.probe
        else:
            self._probes.pop(key, None)
        task.add_done_callback(functools.partial(self._job_done, key))

    def _job_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._jobs.get(key) is task:
            del self._jobs[key]
            self._probes.pop(key, None)


def default_node_id() -> str:
    """A node id from the host name and process id."""
    host = os.uname().nodename.split(".")[0] or "node"
    return f"{host}-{os.getpid()}"
