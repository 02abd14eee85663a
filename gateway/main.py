"""Run one gateway process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client

from gateway.service import GatewayService
from shared.config import GatewayConfig, NatsConfig
from shared.connection import bounded, close_connection, connect
from shared.runtime import stop_event

log = logging.getLogger("fedgate.gateway")


async def start_gateway(
    nats_cfg: NatsConfig, cfg: GatewayConfig, wait_s: float | None = None, **service_kwargs: Any
) -> tuple[GatewayService, Client]:
    """Connect (reconnecting forever) and start a gateway service, told of every
    disconnect and reconnect so that an outage of NATS never counts against a node."""
    holder: list[GatewayService] = []

    async def on_disconnect() -> None:
        if holder:
            holder[0].on_disconnect()

    async def on_reconnect() -> None:
        if holder:
            holder[0].on_reconnect()

    nc = await connect(
        nats_cfg,
        service=True,
        wait_s=wait_s,
        on_disconnect=on_disconnect,
        on_reconnect=on_reconnect,
    )
    service = GatewayService(nc, cfg, **service_kwargs)
    holder.append(service)
    await service.start()
    return service, nc


STOP_BOUND_S = 15.0
"""Longest a graceful stop may take (requests in flight get ``grace_s`` of it)."""


async def serve(
    nats_cfg: NatsConfig,
    cfg: GatewayConfig,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Connect, serve until ``stop`` (default: a signal), then stop gracefully.

    With ``cfg.http_port`` set, the OpenAI-compatible front door (``gateway.http``)
    serves on it too. One exit stack: the front door stops first (intake off), then the
    service, and the NATS connection drains last; a failure to start unwinds the same.
    """
    stop = stop or stop_event()
    async with contextlib.AsyncExitStack() as stack:
        service, nc = await start_gateway(nats_cfg, cfg)
        stack.push_async_callback(close_connection, nc)
        stack.push_async_callback(bounded, service.stop(), STOP_BOUND_S, "service stop")
        if cfg.http_port is not None:
            try:
                from gateway.http import FrontDoor
            except ImportError as exc:
                raise ValueError(
                    f"--http-port needs aiohttp: pip install 'fedgate[http]' ({exc})"
                ) from exc
            front = FrontDoor(service, cfg.http_host, cfg.http_port)
            await front.start()  # OSError when the port is taken
            stack.push_async_callback(front.stop)
            log.info(
                "gateway %s: OpenAI-compatible HTTP on %s:%d",
                service.gateway_id,
                cfg.http_host,
                front.port,
            )
        log.info(
            "gateway %s serving %s on %s",
            service.gateway_id,
            service.subjects.infer_all,
            nats_cfg.url,
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("gateway %s stopping", service.gateway_id)
    return 0
