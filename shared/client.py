"""The Python client: ask the federation for inference over plain NATS.

    async with await FedClient.connect(NatsConfig(url=...)) as client:
        result = await client.infer("generate", "hello")
        async with client.stream("generate", "hello") as stream:
            async for chunk in stream:
                print(chunk.text, end="")

Errors arrive as the typed exceptions of ``shared.errors`` (mapped from the error
headers). The client survives the loss of a gateway: it asks for an acknowledgement
(request header ``Fed-Ack``, an addition to the protocol), then checks that the gateway
holding its request is still alive whenever it has been silent for ``liveness_s``
(a request to the ``Fed-Liveness`` subject of the ack: NATS answers "no responders" at
once when that gateway is gone). A request that lost its gateway, or that no gateway
answered, before any output is resent with the same ``request_id`` through another
gateway of the queue group (tenacity); a stream that lost its gateway after output
ends with ``Interrupted`` rather than repeating chunks, unless its node answers it
directly (docs/protocol.md, "Direct replies"): then it goes on while the node's chunks
keep coming (``direct_grace_s`` of silence at most), and may finish without its gateway.
A direct stream's chunks carry their dispatch's ``attempt``: a chunk already received,
a late chunk of an attempt given up on, and an older attempt's success terminal after a
newer attempt's chunks are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import msgspec
import nats.errors
import tenacity
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.config import NatsConfig
from shared.connection import connect
from shared.streams import stale_terminal, take
from shared.subjects import Subjects


@dataclass(slots=True)
class InferResult:
    """A non-streaming answer with the gateway's figures from the headers."""

    result: m.Result
    served_by: str
    attempts: int
    overhead_us: int
    headers: dict[str, str]

    @property
    def output(self) -> str:
        """The output text."""
        return self.result.output


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, errors.Unavailable)


class FedClient:
    """A fedgate client over one NATS connection (which it closes only if it opened it)."""

    def __init__(
        self,
        nc: Client,
        *,
        subjects: Subjects | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        own_connection: bool = False,
        liveness_s: float = 0.5,
        ack_timeout_s: float = 2.0,
        direct_grace_s: float = 2.0,
    ) -> None:
        self.nc = nc
        self.subjects = subjects or Subjects()
        self.timeout_s = timeout_s
        self.retries = retries
        self.liveness_s = liveness_s
        """Silence after which the client checks that its gateway is still there."""
        self.ack_timeout_s = ack_timeout_s
        """How long to wait for a gateway to acknowledge a request before resending."""
        self.direct_grace_s = direct_grace_s
        """Silence a direct stream waits through once its gateway is gone."""
        self._own = own_connection
        self._inbox = ""
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = 0
        """Reply-subject tokens handed out (one per send)."""
        self._sub: Any = None

    @classmethod
    async def connect(cls, config: NatsConfig | None = None, **kwargs: Any) -> FedClient:
        """Open a connection (failing fast with ``NatsUnavailable``) and wrap it."""
        nc = await connect(config or NatsConfig())
        return cls(nc, own_connection=True, **kwargs)

    async def close(self) -> None:
        """Unsubscribe; close the connection if this client opened it."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._own:
            await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------

    @staticmethod
    def build_request(input: str = "", **fields: Any) -> m.InferRequest:
        """An InferRequest with a fresh request id unless one is given."""
        if not fields.get("request_id"):
            fields["request_id"] = secrets.token_hex(8)
        qos = fields.pop("qos", None)
        if isinstance(qos, dict):
            qos = msgspec.convert(qos, m.QoS)
        return m.InferRequest(
            input=input,
            qos=qos or m.DEFAULT_QOS,
            **{k: v for k, v in fields.items() if v is not None},
        )

    async def infer(
        self,
        capability: str,
        input: str = "",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> InferResult:
        """One non-streaming request; raises a ``FedError`` subclass on failure.

        ``headers`` are sent with the request (e.g. a caller's ``traceparent``).
        """
        request = self.build_request(input, stream=False, **fields)
        subject = self.subjects.infer(capability)
        span = None
        if telemetry.enabled:
            span = telemetry.start(
                "send infer", kind=telemetry.PRODUCER, headers=headers,
                attributes={**telemetry.messaging(subject, "publish"),
                            "fed.request_id": request.request_id or ""},
            )  # fmt: skip
            headers = telemetry.inject(span, headers)
        call = _Call(self, subject, request, headers)
        try:
            msg = await call.first()
            err = errors.from_headers(msg.headers)
            if err is not None:
                raise err
        except errors.FedError as exc:
            if span is not None:
                telemetry.end_error(span, exc.message)
            raise
        except asyncio.CancelledError:
            # The awaiting task was cancelled (e.g. an HTTP client went away): stop the
            # work on its node now, not when the answer comes.
            await self._cancel_quietly(request)
            raise
        finally:
            call.close()
        hdrs = msg.headers or {}
        if span is not None:
            span.set_attributes({"fed.node_id": hdrs.get(h.SERVED_BY, "")})
            span.end()
        return InferResult(
            result=m.result_decoder.decode(msg.data),
            served_by=hdrs.get(h.SERVED_BY, ""),
            attempts=int(hdrs.get(h.ATTEMPTS, "1")),
            overhead_us=int(hdrs.get(h.OVERHEAD_US, "0")),
            headers=dict(hdrs),
        )

    def stream(
        self,
        capability: str,
        input: str = "",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> Stream:
        """A streaming request: ``async with client.stream(...) as s: async for chunk in s``."""
        request = self.build_request(input, stream=True, **fields)
        return Stream(self, capability, request, headers)

    async def cancel(self, request_id: str, tenant_id: str | None = None) -> None:
        """Ask every gateway to cancel ``request_id`` (of ``tenant_id``, when it was
        sent with one: a request id names a request only within its tenant)."""
        body = m.encode(m.CancelRequest(tenant_id=tenant_id)) if tenant_id else b""
        await self.nc.publish(self.subjects.cancel(request_id), body)
        await self.nc.flush()

    async def _cancel_quietly(self, request: m.InferRequest) -> None:
        """Cancel from a task being cancelled: best effort, never raises."""
        with contextlib.suppress(Exception):
            body = (
                m.encode(m.CancelRequest(tenant_id=request.tenant_id))
                if (request.tenant_id)
                else b""
            )
            await self.nc.publish(self.subjects.cancel(request.request_id or ""), body)

    def _retrying(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            reraise=True,
        )

    async def _reply_inbox(self) -> str:
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_msg)
        return self._inbox

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)


class _Call:
    """One request's exchange, resent through another gateway while nothing came back."""

    def __init__(
        self,
        client: FedClient,
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
        client: FedClient,
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
        self._call: _Call | None = None
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
        call = self._call = _Call(self.client, subject, self.request, headers)
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
