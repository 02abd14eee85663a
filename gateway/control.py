"""The gateway's inspection surface: ``fed.gateway.{nodes,stats,route.<cap>}`` and ``$SRV``.

Every gateway answers these itself (no queue group) and names itself in the reply, so
``nats req`` shows the first answer and fedgate's CLI gathers all of them. The replies
are read models (``shared.messages.NodesReply``, ``StatsReply``, ``RouteReply``) built
by the functions this is given (``gateway.views.Views``): it never sees the service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import errors
from shared import headers as h
from shared import messages as m
from shared.subjects import Subjects

log = logging.getLogger("fedgate.gateway")

VERSION = "0.1.0"

_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Control:
    """Answers the control subjects of one gateway."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        gateway_id: str,
        *,
        nodes: Callable[[], m.NodesReply],
        stats: Callable[[], m.StatsReply],
        route: Callable[[m.InferRequest], m.RouteReply],
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.gateway_id = gateway_id
        self.nodes = nodes
        self.stats = stats
        self.route = route
        self._micro: Any = None

    async def subscribe(self) -> list[Subscription]:
        """Subscribe the control subjects and register with NATS service discovery."""
        s = self.subjects
        nc = self.nc
        subs = [
            await nc.subscribe(s.gateway_nodes, cb=self._on_nodes),
            await nc.subscribe(s.gateway_stats, cb=self._on_stats),
            await nc.subscribe(s.gateway_route_all, cb=self._on_route),
        ]
        try:
            from nats import micro

            self._micro = await micro.add_service(
                nc,
                name="fedgate-gateway",
                version=VERSION,
                description="fedgate federation gateway: routes infer.<capability> to nodes",
                metadata={"gateway_id": self.gateway_id},
            )
        except Exception as exc:
            log.warning("service discovery ($SRV) unavailable: %s", exc)
        return subs

    async def close(self) -> None:
        """Leave service discovery."""
        if self._micro is not None:
            with contextlib.suppress(Exception):
                await self._micro.stop()
            self._micro = None

    def stats_view(self) -> dict[str, Any]:
        """The stats reply as plain data (what ``bench/bench_overhead.py`` reads)."""
        return msgspec.to_builtins(self.stats())  # type: ignore[no-any-return]

    async def _on_nodes(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, m.encode(self.nodes()))

    async def _on_stats(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, m.encode(self.stats()))

    async def _on_route(self, msg: Msg) -> None:
        if not msg.reply:
            return
        capability = self.subjects.last_token(msg.subject)
        try:
            request = m.request_decoder.decode(msg.data or b"{}")
        except _UNDECODABLE as exc:
            err = errors.BadRequest(f"invalid request: {exc}")
            await self.nc.publish(msg.reply, b"", headers=err.headers())
            return
        request = msgspec.structs.replace(request, capability=capability)
        try:
            view = self.route(request)
        except errors.FedError as exc:
            await self.nc.publish(msg.reply, b"", headers=exc.headers())
            return
        await self.nc.publish(msg.reply, m.encode(view), headers={h.STATUS: "ok"})
