"""The NATS callbacks of a service's requests: ``infer.<capability>`` and
``fed.cancel.<request_id>``. They decode and check, then call the engine.

A request is refused before it is accepted (``400``: bad subject, oversize, undecodable,
``stream`` on ``embed``) with the caller's trace context kept. An accepted request's
identity is (tenant, request id): the same caller resending the same bytes with
``Fed-Ack`` takes its request over; anything else that collides is ``409 duplicate``
(docs/protocol.md, "Request identity").
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.core.flight import Flight
from gateway.core.verdicts import refusal
from gateway.engine import Engine
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
        held = self.engine.by_ident.get((request.tenant_id or "", request_id))
        if held is not None:
            await self._collision(held, msg, reply, digest)
            return
        hdrs = msg.headers
        try:
            flight = await self.engine.admit(
                request, raw, request_id, reply, digest, hdrs, msg.subject,
                bool(hdrs and h.ACK in hdrs),
            )  # fmt: skip
        except errors.RateLimited as exc:  # the tenant is over a limit: nothing was held
            await refuse(reply, exc, hdrs)
            return
        flight.overhead_ns += time.perf_counter_ns() - t0

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
            if held.reply != reply:
                await self.wire.moved(held)
            held.reply = reply
            await self.wire.ack(held)
            await self.wire.replay(held)
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
        flight = self.engine.by_ident.get((tenant, self.subjects.last_token(msg.subject)))
        if flight is not None:
            await self.engine.cancel(flight)
