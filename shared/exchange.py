"""One request's exchange with the federation: the call, and the stream built on it.

``Call`` sends a request with ``Fed-Ack``, reads its replies from the client's inbox
queue, watches the acknowledging gateway (``Fed-Liveness``) whenever it has been
silent, and resends with the same request id while no gateway holds the request.
``Stream`` iterates one streaming request's chunks on a ``Call`` (the success terminal
is a header-only message; a direct stream's chunks carry their ``attempt``, see
``shared.streams``). Both work for an ``Owner``: what they need of ``shared.client.FedClient``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, Self

import nats.errors
import tenacity
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.streams import stale_terminal, take
from shared.subjects import Subjects


class Owner(Protocol):
    """The client a call belongs to (``shared.client.FedClient``): its connection,
    timeouts (seconds), reply inbox and the queues the inbox routes replies to."""

    nc: Client
    subjects: Subjects
    timeout_s: float
    liveness_s: float
    ack_timeout_s: float
    direct_grace_s: float
    _tokens: int
    _queues: dict[str, asyncio.Queue[Msg]]

    def _retrying(self) -> tenacity.AsyncRetrying: ...

    async def _reply_inbox(self) -> str: ...

    async def _cancel_quietly(self, request: m.InferRequest) -> None: ...

    async def cancel(self, request_id: str, tenant_id: str | None = None) -> None: ...


class Call:
    """One request's exchange, resent through another gateway while nothing came back."""

    def __init__(
        self,
        client: Owner,
        subject: str,
        request: m.InferRequest,
        headers: dict[str, str] | None,
    ) -> None:
        self.client = client
        self.subject = subject
        self.request = request
        self.body = m.encode(request)
        self.headers = {**(headers or {}), h.ACK: "1"}
        self.deadline_s = (
            request.timeout_ms / 1000 if request.timeout_ms else client.timeout_s
        ) + 1.0
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.token = ""
        self.liveness: str | None = None
        self.gateway = ""
        self.direct = False
        """A node answers this call directly: it may finish without its gateway."""
        self._sends = 0
        self._loop = asyncio.get_running_loop()
        self._expires = self._loop.time() + self.deadline_s

    async def first(self) -> Msg:
        """Send, and resend with the same request id while no gateway holds the request."""
        async for attempt in self.client._retrying():
            with attempt:
                await self._send()
                return await self.next()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self) -> None:
        inbox = await self.client._reply_inbox()
        self.close()
        self._sends += 1
        # Unique per send in this client: two calls may share a request id (another
        # tenant's, or a caller's mistake) and must never share a reply queue.
        self.client._tokens += 1
        self.token = f"{self.client._tokens:x}"
        self.liveness = None
        self.client._queues[self.token] = self.queue = asyncio.Queue()
        await self.client.nc.publish(
            self.subject, self.body, reply=f"{inbox}.{self.token}", headers=self.headers
        )

    async def next(self) -> Msg:
        """The next reply message; raises Unavailable if the gateway is gone."""
        while True:
            remaining = self._expires - self._loop.time()
            if remaining <= 0:
                raise errors.Timeout(self.deadline_s, detail=f"no answer on {self.subject}")
            wait = min(remaining, self.client.liveness_s if self.liveness else
                       self.client.ack_timeout_s)  # fmt: skip
            try:
                msg = await asyncio.wait_for(self.queue.get(), wait)
            except TimeoutError:
                lost = await self._check_gateway()
                if lost is None:
                    continue
                # An answer sent just before the gateway forgot the request may still be on
                # its way (another subscription), or a node answers us directly and may
                # finish without the gateway: give it a moment first.
                grace = self.client.direct_grace_s if self.direct else self.client.liveness_s
                try:
                    msg = await asyncio.wait_for(self.queue.get(), min(grace, remaining))
                except TimeoutError:
                    raise errors.Unavailable(lost) from None
            hdrs = msg.headers
            if hdrs:
                if hdrs.get(h.NATS_STATUS) == "503":
                    raise errors.Unavailable(f"no gateway answers {self.subject}")
                if h.LIVENESS in hdrs and not msg.data:
                    self.liveness = hdrs[h.LIVENESS]
                    self.gateway = hdrs.get(h.GATEWAY, "")
                    continue
            return msg

    async def _check_gateway(self) -> str | None:
        """Why the request is no longer held by a gateway, or None while it is."""
        if self._loop.time() >= self._expires:
            return None
        if self.liveness is None:
            return f"no gateway acknowledged {self.request.request_id}"
        try:
            reply = await self.client.nc.request(self.liveness, b"", timeout=self.client.liveness_s)
        except nats.errors.NoRespondersError:
            return f"gateway {self.gateway} is gone"
        except nats.errors.TimeoutError:
            return None  # alive but busy, or a network hiccup: keep waiting until the deadline
        if reply.headers and reply.headers.get(h.STATUS) == "unknown":
            # The gateway no longer holds the request (e.g. its answer was lost in a
            # NATS restart): ask again, with the same request id.
            return f"gateway {self.gateway} lost {self.request.request_id}"
        return None

    def close(self) -> None:
        """Stop routing replies of the current send to this call."""
        if self.token:
            self.client._queues.pop(self.token, None)


class Stream:
    """One streaming request. Iterate for ``Chunk``s; figures are set when it ends."""

    def __init__(
        self,
        client: Owner,
        capability: str,
        request: m.InferRequest,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.capability = capability
        self.request = request
        self.request_id = request.request_id or ""
        self.served_by = ""
        self.tokens = 0
        self.attempts = 0
        self.finish_reason = ""
        self.headers: dict[str, str] = {}
        self.text = ""
        self._extra_headers = headers
        self._call: Call | None = None
        self._span: Any = None
        self._started = False
        self._finished = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished and exc_type is not None:
            if issubclass(exc_type, asyncio.CancelledError):
                await self.client._cancel_quietly(self.request)
            else:
                await self.cancel()
        if self._call is not None:
            self._call.close()

    def __aiter__(self) -> AsyncIterator[m.Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[m.Chunk]:
        if self._started:
            raise RuntimeError("a stream can be iterated once")
        self._started = True
        subject = self.client.subjects.infer(self.capability)
        headers = self._extra_headers
        if telemetry.enabled:
            self._span = telemetry.start(
                "send infer", kind=telemetry.PRODUCER, headers=headers,
                attributes={**telemetry.messaging(subject, "publish"),
                            "fed.request_id": self.request_id, "fed.stream": True},
            )  # fmt: skip
            headers = telemetry.inject(self._span, headers)
        call = self._call = Call(self.client, subject, self.request, headers)
        parts: list[str] = []
        latest = 0  # the newest attempt whose chunks came directly from its node
        try:
            msg = await call.first()
            while True:
                if not msg.data:
                    if not stale_terminal(msg, latest):
                        self._finish(msg)
                        return
                else:
                    chunk = m.direct_chunk_decoder.decode(msg.data)
                    if take(chunk, len(parts), latest):
                        if chunk.attempt:
                            latest = chunk.attempt
                            call.direct = True
                        parts.append(chunk.text)
                        yield chunk
                try:
                    msg = await call.next()
                except errors.Unavailable as exc:
                    raise errors.Interrupted(f"lost the gateway mid-stream: {exc}") from exc
        except errors.FedError as exc:
            self._end_span(exc.message)
            raise
        except asyncio.CancelledError:
            if not self._finished:
                await self.client._cancel_quietly(self.request)
            raise
        finally:
            self.text = "".join(parts)
            call.close()

    def _finish(self, msg: Msg) -> None:
        self._finished = True
        hdrs = dict(msg.headers or {})
        self.headers = hdrs
        self.served_by = hdrs.get(h.SERVED_BY, "")
        self.attempts = int(hdrs.get(h.ATTEMPTS, "0") or 0)
        err = errors.from_headers(hdrs)
        if err is not None:
            raise err
        self.tokens = int(hdrs.get(h.TOKENS, "0") or 0)
        self.finish_reason = hdrs.get(h.FINISH_REASON, "")
        self._end_span(None)

    def _end_span(self, error: str | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        span.set_attributes({"fed.node_id": self.served_by})
        if error is None:
            span.end()
        else:
            telemetry.end_error(span, error)

    async def cancel(self) -> None:
        """Cancel this request (the gateway answers ``cancelled`` and the node stops)."""
        if not self._finished:
            await self.client.cancel(self.request_id, self.request.tenant_id)
