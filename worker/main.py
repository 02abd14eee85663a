"""Run one worker node until SIGINT/SIGTERM (then drain and leave)."""

from __future__ import annotations

import asyncio
import logging

from shared import telemetry
from shared.config import NatsConfig, WorkerConfig
from shared.connection import bounded, close_connection, connect
from shared.messages import Privacy
from shared.runtime import stop_event
from shared.subjects import Subjects
from worker.backends.base import Backend
from worker.engine_metrics import metrics_url
from worker.node import Node

log = logging.getLogger("fedgate.worker")


def build_node(nc: object, backend: Backend, cfg: WorkerConfig) -> Node:
    """A Node from a WorkerConfig (every model serves every configured capability)."""
    return Node(
        nc,  # type: ignore[arg-type]
        backend,
        node_id=cfg.node_id,
        region=cfg.region,
        models={model: tuple(cfg.capabilities) for model in cfg.models},
        capacity=cfg.capacity,
        privacy=Privacy(cfg.privacy),
        cost=cfg.cost,
        gpu=cfg.gpu,
        labels=dict(cfg.labels),
        heartbeat_interval_s=cfg.heartbeat_interval_s,
        drain_timeout_s=cfg.drain_timeout_s,
        subjects=Subjects(cfg.public_root, cfg.internal_root),
        stream_interval_ms=cfg.stream_interval_ms,
        engine_metrics_url=metrics_url(
            cfg.engine_metrics_url, getattr(backend, "metrics_url", None)
        ),
        engine_metrics_interval_s=cfg.engine_metrics_interval_s,
        engine_metrics_timeout_s=cfg.engine_metrics_timeout_s,
    )


async def serve(
    nats_cfg: NatsConfig,
    cfg: WorkerConfig,
    backend: Backend,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Join the federation and serve until ``stop`` (default: a signal)."""
    stop = stop or stop_event()
    telemetry.setup("fedgate-worker")  # no-op unless OTEL_TRACES_EXPORTER is set
    nc = await connect(nats_cfg, service=True)
    node = build_node(nc, backend, cfg)
    await node.start()
    log.info("node %s (%s) serving %s", cfg.node_id, cfg.region, ", ".join(cfg.models))
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("node %s draining", cfg.node_id)
    await bounded(node.stop(), cfg.drain_timeout_s + 10.0, "node stop")
    await close_connection(nc)  # drained if NATS is there, closed in any case
    return 0


async def serve_function(
    fn: object, *, node_id: str, nats: NatsConfig | None = None, **worker_fields: object
) -> int:
    """Serve your own async-generator function as a node (see FunctionBackend)."""
    from worker.backends.base import FunctionBackend

    cfg = WorkerConfig(node_id=node_id, **worker_fields)  # type: ignore[arg-type]
    return await serve(nats or NatsConfig(), cfg, FunctionBackend(fn))  # type: ignore[arg-type]
