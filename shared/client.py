"""The Python client: ask the federation for inference over plain NATS.

    async with await FedClient.connect(NatsConfig(url=...)) as client:
        result = await client.infer("generate", "hello")
        async with client.stream("generate", "hello") as stream:
            async for chunk in stream:
                print(chunk.text, end="")

Errors arrive as the typed exceptions of ``shared.errors`` (mapped from the error
headers). A request that no gateway answered before any output (no responders, or a
gateway that vanished) is retried with the same ``request_id`` through another
gateway of the queue group (tenacity), so a gateway crash costs a retry, not a failure.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self.nc = nc
        self.subjects = subjects or Subjects()
        self.timeout_s = timeout_s
        self.retries = retries
        self._own = own_connection
        self._inbox = ""
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Any = None

    @classmethod
    async def connect(cls, config: NatsConfig | None = None, **kwargs: Any) -> FedClient:
        """Open a connection (failing fast with ``NatsUnavailable``) and wrap it."""
        nc = await connect(config or NatsConfig())
        return cls(nc, own_connection=True, **kwargs)

    async def close(self) -> None:
        """Unsubscribe; close the connection if this client opened it."""
        if self._sub is not None:
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
        fields.setdefault("request_id", secrets.token_hex(8))
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
        body = m.encode(request)
        timeout = (request.timeout_ms / 1000 if request.timeout_ms else self.timeout_s) + 1.0
        subject = self.subjects.infer(capability)
        span = None
        if telemetry.enabled:
            span = telemetry.start(
                "send infer", kind=telemetry.PRODUCER, headers=headers,
                attributes={**telemetry.messaging(subject, "publish"),
                            "fed.request_id": request.request_id or ""},
            )  # fmt: skip
            headers = telemetry.inject(span, headers)
        try:
            async for attempt in self._retrying():
                with attempt:
                    msg = await self._request(subject, body, timeout, headers)
            err = errors.from_headers(msg.headers)
            if err is not None:
                raise err
        except errors.FedError as exc:
            if span is not None:
                telemetry.end_error(span, exc.message)
            raise
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

    async def _request(
        self, subject: str, body: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Msg:
        try:
            return await self.nc.request(subject, body, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise errors.Unavailable(f"no gateway answers {subject}") from exc
        except nats.errors.TimeoutError as exc:
            raise errors.Timeout(timeout, detail=f"no answer on {subject} in {timeout:g}s") from exc

    def _retrying(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            reraise=True,
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

    async def cancel(self, request_id: str) -> None:
        """Ask every gateway to cancel ``request_id``."""
        await self.nc.publish(self.subjects.cancel(request_id), b"")
        await self.nc.flush()

    async def _stream_inbox(self) -> str:
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_stream_msg)
        return self._inbox

    async def _on_stream_msg(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)


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
        self._headers = headers
        self._span: Any = None
        self.capability = capability
        self.request = request
        self.request_id = request.request_id or ""
        self.served_by = ""
        self.tokens = 0
        self.attempts = 0
        self.finish_reason = ""
        self.headers: dict[str, str] = {}
        self.text = ""
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._started = False
        self._finished = False
        self._deadline_s = (
            request.timeout_ms / 1000 if request.timeout_ms else client.timeout_s
        ) + 1.0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished and exc_type is not None:
            await self.cancel()
        self.client._queues.pop(self.request_id, None)

    async def _send(self) -> None:
        inbox = await self.client._stream_inbox()
        self.client._queues[self.request_id] = self._queue
        subject = self.client.subjects.infer(self.capability)
        headers = self._headers
        if telemetry.enabled:
            if self._span is None:
                self._span = telemetry.start(
                    "send infer", kind=telemetry.PRODUCER, headers=headers,
                    attributes={**telemetry.messaging(subject, "publish"),
                                "fed.request_id": self.request_id, "fed.stream": True},
                )  # fmt: skip
            headers = telemetry.inject(self._span, headers)
        await self.client.nc.publish(
            subject, m.encode(self.request), reply=f"{inbox}.{self.request_id}", headers=headers
        )

    async def _first(self) -> Msg:
        """Send, and resend through another gateway while nobody answered at all."""
        async for attempt in self.client._retrying():
            with attempt:
                await self._send()
                msg = await self._next_msg()
                if msg.headers and msg.headers.get(h.NATS_STATUS) == "503":
                    raise errors.Unavailable("no gateway answers infer requests")
        return msg

    async def _next_msg(self) -> Msg:
        try:
            return await asyncio.wait_for(self._queue.get(), self._deadline_s)
        except TimeoutError as exc:
            raise errors.Timeout(self._deadline_s, detail="stream timed out") from exc

    def __aiter__(self) -> AsyncIterator[m.Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[m.Chunk]:
        if self._started:
            raise RuntimeError("a stream can be iterated once")
        self._started = True
        msg = await self._first()
        parts: list[str] = []
        try:
            while True:
                if msg.data:
                    chunk = m.chunk_decoder.decode(msg.data)
                    parts.append(chunk.text)
                    yield chunk
                else:
                    self._finish(msg)
                    return
                msg = await self._next_msg()
        finally:
            self.text = "".join(parts)
            self.client._queues.pop(self.request_id, None)

    def _finish(self, msg: Msg) -> None:
        self._finished = True
        hdrs = dict(msg.headers or {})
        self.headers = hdrs
        self.served_by = hdrs.get(h.SERVED_BY, "")
        self.attempts = int(hdrs.get(h.ATTEMPTS, "0") or 0)
        err = errors.from_headers(hdrs)
        span, self._span = self._span, None
        if span is not None:
            span.set_attributes(
                {"fed.node_id": self.served_by, "fed.tokens": hdrs.get(h.TOKENS, "0")}
            )
            if err is not None:
                telemetry.end_error(span, err.message)
            else:
                span.end()
        if err is not None:
            raise err
        self.tokens = int(hdrs.get(h.TOKENS, "0") or 0)
        self.finish_reason = hdrs.get(h.FINISH_REASON, "")

    async def cancel(self) -> None:
        """Cancel this request (the gateway answers ``cancelled`` and the node stops)."""
        if not self._finished:
            await self.client.cancel(self.request_id)
