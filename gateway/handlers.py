"""The NATS callbacks of a service's requests: ``infer.<capability>`` and
``fed.cancel.<request_id>``. They decode and check, then call the engine.

A request is refused before it is accepted (``400``: bad subject, oversize, undecodable,
``stream`` on ``embed``) with the caller's trace context kept. An accepted request's
identity is (tenant, request id): the same caller resending the same bytes with
``Fed-Ack`` takes its request over; anything else that collides is ``409 duplicate``
(docs/protocol.md, "Request identity"). A request with a caller-given id is first
claimed across gateways (gateway/idempotency.py), in a task of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.core.flight import Flight
from gateway.core.verdicts import refusal
from gateway.engine import Engine
from gateway.idempotency import Idempotency
from gateway.wire import ENVELOPE_BYTES
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.subjects import Subjects

_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Intake:
    """Accepts the requests of NATS callers into the engine."""

    def __init__(
        self, nc: Client, engine: Engine, subjects: Subjects, max_payload_bytes: int
    ) -> None:
        self.nc = nc
        self.engine = engine
        self.wire = engine.wire
        self.subjects = subjects
        self.max_payload_bytes = max_payload_bytes
        self._ids = random.Random(secrets.randbits(64))
        """Generated request ids: 16 hex digits, as documented."""
        self.claims: Idempotency | None = None
        """Request identity across gateways, set by the service when on."""

    @property
    def max_body(self) -> int:
        """Largest request body: the config's limit, capped by the server's max_payload
        (which may change on a reconnect)."""
        server = getattr(self.nc, "max_payload", 0) or 0
        if server <= ENVELOPE_BYTES:
            return self.max_payload_bytes
        return min(self.max_payload_bytes, server - ENVELOPE_BYTES)

    async def on_request(self, msg: Msg) -> None:
        """One request on ``infer.<capability>``."""
        t0 = time.perf_counter_ns()
        reply = msg.reply
        if not reply:
            return  # nobody to answer: a plain publish is not a request
        refuse = self.wire.refuse
        capability = self.subjects.capability_of(msg.subject)
        if capability is None:
            why = (
                f"bad subject {msg.subject!r}: use {self.subjects.public}.<capability> "
                "with [a-z0-9_-]"
            )
            await refuse(reply, errors.BadRequest(why), msg.headers)
            return
        raw = msg.data or b"{}"
        if len(raw) > self.max_body:
            await refuse(reply, self._too_large(len(raw)), msg.headers)
            return
        try:
            request = m.request_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            await refuse(reply, errors.BadRequest(f"invalid request: {exc}"), msg.headers)
            return
        except _UNDECODABLE:
            await refuse(reply, errors.BadRequest("body is not a JSON object"), msg.headers)
            return
        request = msgspec.structs.replace(request, capability=capability)
        if request.tenant_id == m.ANONYMOUS_HTTP_TENANT:
            why = f"tenant_id {m.ANONYMOUS_HTTP_TENANT} is reserved for the HTTP front door"
            await refuse(reply, errors.BadRequest(why), msg.headers)
            return
        if request.stream:
            refused = refusal(request)
            if refused is not None:
                await refuse(reply, refused, msg.headers)
                return
        given = request.request_id
        request_id = given or f"{self._ids.getrandbits(64):016x}"
        digest = hashlib.blake2b(raw, digest_size=16).digest() if given else b""
        ident = (request.tenant_id or "", request_id)
        held = self.engine.by_ident.get(ident)
        if held is not None:
            await self._collision(held, msg, reply, digest)
            return
        claims = self.claims
        if given and claims is not None:  # across gateways (gateway/idempotency.py)
            claiming = claims.pending.get(ident)
            if claiming is not None:  # being claimed here: then a same-gateway collision
                self.engine.spawn(self._after(claiming, self.on_request, msg), "resend")
                return
            if claims.shared:

                def run(job_id: str) -> Awaitable[Flight | None]:
                    return self._admit(request, raw, request_id, msg, digest, t0, job_id)

                claims.start(ident, request, digest, msg, run)
                return
        await self._admit(request, raw, request_id, msg, digest, t0)

    async def _admit(
        self,
        request: m.InferRequest,
        raw: bytes,
        request_id: str,
        msg: Msg,
        digest: bytes,
        t0: int,
        job_id: str = "",
    ) -> Flight | None:
        """Accept the request into the engine (None: refused before anything was held)."""
        hdrs = msg.headers
        reply = msg.reply
        try:
            flight = await self.engine.admit(
                request, raw, request_id, reply, digest, hdrs, msg.subject,
                bool(hdrs and h.ACK in hdrs), job_id=job_id,
            )  # fmt: skip
        except errors.RateLimited as exc:  # the tenant is over a limit: nothing was held
            await self.wire.refuse(reply, exc, hdrs)
            return None
        flight.overhead_ns += time.perf_counter_ns() - t0
        return flight

    @staticmethod
    async def _after(
        claiming: asyncio.Event, callback: Callable[[Msg], Awaitable[None]], msg: Msg
    ) -> None:
        """A request or cancel whose identity is being claimed here: once that claim is
        settled, it meets the flight held here (or, none held, is taken again)."""
        await claiming.wait()
        await callback(msg)

    async def _collision(self, held: Flight, msg: Msg, reply: str, digest: bytes) -> None:
        """A request whose (tenant, request id) is already in flight here.

        Only the same caller resending the same bytes (``Fed-Ack``: its ack or what we
        relayed was lost) takes the request over, on its new reply subject, with a replay
        of the chunks it may have missed. Anything else is ``409 duplicate``: another
        caller's prompt never runs as, nor receives, this one. The reply subject that lost
        the request gets a ``409 duplicate`` terminal: whoever still listens there is told
        where the answer went, and nobody waits for nothing.
        """
        acked = bool(msg.headers and h.ACK in msg.headers)
        if acked and digest == held.digest and held.sink is None:
            await self.wire.take_over(held, reply)
            return
        why = " with a different body" if acked else ""
        error = errors.Duplicate(f"request_id {held.request_id} is already in flight{why}")
        await self.wire.refuse(reply, error, msg.headers)

    def _too_large(self, size: int) -> errors.PayloadTooLarge:
        limit = self.max_body
        why = (
            "the gateway's max_payload_bytes"
            if limit == self.max_payload_bytes
            else f"NATS max_payload minus {ENVELOPE_BYTES} bytes for the dispatch envelope"
        )
        return errors.PayloadTooLarge(
            f"request body of {size} bytes exceeds the limit of {limit} bytes ({why})"
        )

    async def on_cancel(self, msg: Msg) -> None:
        """``fed.cancel.<request_id>``, body empty or ``{"tenant_id": ...}``: the request
        of that caller only (an empty body names the requests sent without a tenant)."""
        tenant = ""
        if msg.data:
            try:
                tenant = m.cancel_request_decoder.decode(msg.data).tenant_id or ""
            except msgspec.DecodeError:
                return
        if tenant == m.ANONYMOUS_HTTP_TENANT:
            return  # reserved for the front door's callers: not a NATS caller's to cancel
        ident = (tenant, self.subjects.last_token(msg.subject))
        flight = self.engine.by_ident.get(ident)
        if flight is not None:
            await self.engine.cancel(flight)
        elif self.claims is not None and ident in self.claims.pending:
            claiming = self.claims.pending[ident]
            self.engine.spawn(self._after(claiming, self.on_cancel, msg), "cancel")
