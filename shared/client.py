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

Here: ``FedClient`` and ``InferResult``; one request's exchange (acks, liveness,
resends) and ``Stream`` are ``shared.exchange``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any, Self

import msgspec
import tenacity
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from shared.config import NatsConfig
from shared.connection import connect
from shared.exchange import Call, Stream
from shared.subjects import Subjects

__all__ = ["FedClient", "InferResult", "Stream"]


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
        call = Call(self, subject, request, headers)
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
