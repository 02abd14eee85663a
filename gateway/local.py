"""The front door's way into its own gateway: requests go straight to the engine.

An HTTP request becomes one request of the NATS contract (the same ``InferRequest``,
identity rules and answers) without crossing NATS to reach this gateway: the engine
holds it with an in-process queue as its caller, which receives exactly the chunks and
the one answer (bytes and headers) a NATS caller would. Only the dispatch to the node
and the node's replies travel over NATS.

``LocalClient`` has ``FedClient``'s interface (``infer``, ``stream``), so the HTTP code
reads the same. A request whose consumer goes away before its end (the HTTP handler is
cancelled when its client disconnects, or leaves the stream) is cancelled at once: the
node receives ``fed.node.<id>.cancel``. Identity is the NATS one: the same tenant and
request id again is a ``409``, unless it is the same body (a client retrying a request
whose connection it lost), which takes the request over; the earlier caller gets the
``409``.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import TracebackType
from typing import Any, Self

import msgspec

from gateway.core.flight import Flight
from gateway.core.verdicts import refusal
from gateway.engine import Engine
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.client import FedClient, InferResult
from shared.subjects import Subjects

GUARD_S = 1.0
"""Past its deadline, a request's consumer stops waiting (the engine answers before)."""

Sink = asyncio.Queue[tuple[bytes, dict[str, str] | None]]
"""What the engine sends an in-process caller: ``(chunk, None)`` or ``(data, headers)``."""


class LocalClient:
    """Requests into one gateway's engine, answered in-process."""

    def __init__(self, engine: Engine, subjects: Subjects) -> None:
        self.engine = engine
        self.subjects = subjects

    async def close(self) -> None:
        """Nothing to release (requests in flight end with their handlers)."""

    async def infer(
        self,
        capability: str,
        input: str = "",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> InferResult:
        """One non-streaming request; raises a ``FedError`` subclass on failure."""
        flight, sink, until = await self._admit(capability, input, False, headers, fields)
        try:
            data, hdrs = await _next(sink, until, flight)
        except BaseException:  # cancelled (the client went away), or past the deadline
            if flight.sink is sink:  # not taken over by a resend
                await self.engine.cancel(flight)
            raise
        hdrs = hdrs or {}
        err = errors.from_headers(hdrs)
        if err is not None:
            raise err
        return InferResult(
            result=m.result_decoder.decode(data),
            served_by=hdrs.get(h.SERVED_BY, ""),
            attempts=int(hdrs.get(h.ATTEMPTS, "1")),
            overhead_us=int(hdrs.get(h.OVERHEAD_US, "0")),
            headers=hdrs,
        )

    def stream(
        self,
        capability: str,
        input: str = "",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> LocalStream:
        """A streaming request: ``async with client.stream(...) as s: async for chunk in s``."""
        return LocalStream(self, capability, input, headers, fields)

    async def _admit(
        self,
        capability: str,
        input: str,
        stream: bool,
        headers: dict[str, str] | None,
        fields: dict[str, Any],
    ) -> tuple[Flight, Sink, float]:
        request = FedClient.build_request(input, stream=stream, **fields)
        raw = m.encode(request)  # what a NATS caller would have sent
        request = msgspec.structs.replace(request, capability=capability)
        refused = refusal(request)
        if refused is not None:
            raise refused
        request_id = request.request_id or ""
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        engine = self.engine
        sink: Sink = asyncio.Queue()
        held = engine.by_ident.get((request.tenant_id or "", request_id))
        if held is not None:  # docs/protocol.md, "Request identity"
            if held.sink is None or held.digest != digest:
                raise errors.Duplicate(f"request_id {request_id} is already in flight")
            # The same caller again with the same body (it lost its connection): it takes
            # the request over, the earlier one is answered 409.
            await engine.wire.moved(held)
            held.sink = sink
            await engine.wire.replay(held)
            flight = held
        else:
            subject = self.subjects.infer(capability)
            flight = await engine.admit(
                request, raw, request_id, "", digest, headers, subject, sink=sink
            )
        loop = asyncio.get_running_loop()
        until = loop.time() + (flight.deadline - engine.clock()) + GUARD_S
        return flight, sink, until


async def _next(sink: Sink, until: float, flight: Flight) -> tuple[bytes, dict[str, str] | None]:
    """The next message for an in-process caller."""
    if not sink.empty():
        return sink.get_nowait()
    try:
        async with asyncio.timeout_at(until):
            return await sink.get()
    except TimeoutError:
        raise errors.Timeout(detail=f"no answer for {flight.request_id}") from None


class LocalStream:
    """One streaming request. Iterate for ``Chunk``s; figures are set when it ends."""

    def __init__(
        self,
        client: LocalClient,
        capability: str,
        input: str,
        headers: dict[str, str] | None,
        fields: dict[str, Any],
    ) -> None:
        self.client = client
        self.request_id: str = fields.get("request_id") or ""
        self.served_by = ""
        self.tokens = 0
        self.attempts = 0
        self.finish_reason = ""
        self.headers: dict[str, str] = {}
        self.text = ""
        self._args = (capability, input, headers, fields)
        self._flight: Flight | None = None
        self._sink: Sink | None = None
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
        flight = self._flight
        if flight is not None and not self._finished and flight.sink is self._sink:
            # The consumer left before the end (its client went away, or it broke off).
            await self.client.engine.cancel(flight)

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        if self._started:
            raise RuntimeError("a stream can be iterated once")
        self._started = True
        capability, input, headers, fields = self._args
        flight, sink, until = await self.client._admit(capability, input, True, headers, fields)
        self._flight, self._sink = flight, sink
        parts: list[str] = []
        try:
            while True:
                data, hdrs = await _next(sink, until, flight)
                if hdrs is not None:
                    self._finish(hdrs)
                    return
                chunk = m.chunk_decoder.decode(data)
                parts.append(chunk.text)
                yield chunk
        finally:
            self.text = "".join(parts)

    def _finish(self, hdrs: dict[str, str]) -> None:
        self._finished = True
        self.headers = hdrs
        self.served_by = hdrs.get(h.SERVED_BY, "")
        self.attempts = int(hdrs.get(h.ATTEMPTS, "0") or 0)
        err = errors.from_headers(hdrs)
        if err is not None:
            raise err
        self.tokens = int(hdrs.get(h.TOKENS, "0") or 0)
        self.finish_reason = hdrs.get(h.FINISH_REASON, "")
