"""Request identity across gateways: a request with a caller-given ``request_id`` is
claimed in the bucket ``fedgate_requests`` before it runs, so that a resend through
another gateway attaches to it instead of running it twice (docs/protocol.md,
"Request identity").

    claim created         run it here (the claim: running, owner = this gateway)
    claim found           gateway.claims.decide:
      another body, or no Fed-Ack   409 duplicate
      done                          replay the stored answer (409 if it was not kept)
      running                       ask the owner, on fed.takeover.<owner>, to take the
                                    resend over (gateway.wire.Wire.take_over); owner
                                    gone ("no responders"): take the claim by
                                    compare-and-set, cancel the owner's job, run it here
    the flight ends       ok: the claim becomes done with its answer; else it is deleted
                          (a resend runs it again); both written in the background

Claims are made in a task per request (the intake callback would otherwise wait for
JetStream one request at a time); a second request of an identity being claimed here
waits for that claim, then meets the flight as a same-gateway collision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.claims import (
    Claim,
    State,
    Taken,
    Takeover,
    TakeoverReply,
    Verdict,
    answer_of,
    decide,
    encoder,
    key_of,
    refusal,
    replay_headers,
    takeover_decoder,
    takeover_reply_decoder,
)
from gateway.core.flight import Flight
from gateway.engine import Engine
from gateway.registry import KvRegistry, Registry
from gateway.wire import trace_of
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.subjects import Subjects

Ident = tuple[str, str]
Run = Callable[[str], Awaitable[Flight | None]]
"""Admit the request here with this job id (None: refused before it was held)."""
Write = Callable[[KvRegistry], Awaitable[object]]

ASK_TIMEOUT_S = 1.0
"""Longest wait for an owner's answer to a takeover."""
TRIES = 8
"""Rounds of claim, read and decide before running unregistered (a contended key)."""


class Idempotency:
    """This gateway's claims in the bucket, and the resends that meet them."""

    def __init__(
        self,
        nc: Client,
        engine: Engine,
        subjects: Subjects,
        gateway_id: str,
        registry: Registry,
        ttl_s: float,
    ) -> None:
        self.nc = nc
        self.engine = engine
        self.wire = engine.wire
        self.subjects = subjects
        self.gateway_id = gateway_id
        self.registry = registry
        self.ttl_s = ttl_s
        self.held: dict[Ident, tuple[str, int]] = {}
        """Identities this gateway's flights claimed: (key, revision)."""
        self.pending: dict[Ident, asyncio.Event] = {}
        """Identities being claimed here, set when their claim is settled."""
        self.replayed = self.taken_over = self.adopted = 0
        """Resends answered from a stored answer, handed to their owner, or adopted."""
        self._jobs = 0
        self._writes: list[Write] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def shared(self) -> bool:
        """Whether requests are claimed in the bucket now (False: per gateway)."""
        return self.registry.current() is not None

    # -- the intake ------------------------------------------------------------------------

    def start(
        self, ident: Ident, request: m.InferRequest, digest: bytes, msg: Msg, run: Run
    ) -> None:
        """Claim ``ident`` and run, replay, hand over or refuse, in a task."""
        self.pending[ident] = asyncio.Event()
        self.engine.spawn(self._claim(ident, request, digest, msg, run), "claim")

    async def _claim(
        self, ident: Ident, request: m.InferRequest, digest: bytes, msg: Msg, run: Run
    ) -> None:
        try:
            await self._settle(ident, request, digest, msg, run)
        finally:
            self.pending.pop(ident).set()

    async def _settle(
        self, ident: Ident, request: m.InferRequest, digest: bytes, msg: Msg, run: Run
    ) -> None:
        key = key_of(*ident)
        acked = bool(msg.headers and h.ACK in msg.headers)
        self._jobs += 1
        job_id = f"{self.engine.table.job_prefix}c{self._jobs:x}"
        mine = Claim(owner=self.gateway_id, digest=digest, job_id=job_id, at_s=time.time())
        waited = 0  # the revision whose owner said "unknown" and was given time to write
        for _ in range(TRIES):
            kv = self.registry.current()
            if kv is None:
                break
            try:
                created = await kv.create(key, mine)
                found, rev = (None, 0) if created is not None else await kv.read(key)
            except Exception as exc:
                self.registry.failed(exc)
                break
            if created is not None:
                await self._run(ident, key, created, job_id, run)
                return
            if found is None:
                continue  # deleted since: claim it again
            verdict = decide(found, digest, acked)
            if verdict is Verdict.REPLAY:
                await self._replay(found, msg)
                return
            if verdict is not Verdict.ASK_OWNER:
                why = refusal(found, ident[1], acked, self.ttl_s)
                await self.wire.refuse(msg.reply, errors.Duplicate(why), msg.headers)
                return
            asked = await self._ask(found.owner, ident, digest, msg.reply)
            if asked is Taken.TAKEN:
                self.taken_over += 1
                return
            if asked is Taken.UNKNOWN and rev != waited:
                waited = rev  # its answer or its deletion may be on the way: look again
                try:
                    await self._changed(kv, key, rev)
                except Exception as exc:
                    self.registry.failed(exc)
                    break
                continue
            if asked in (Taken.REFUSED, Taken.SILENT):
                why = f"request_id {ident[1]} is already in flight at gateway {found.owner}"
                if asked is Taken.SILENT:
                    why += ", which does not answer"
                await self.wire.refuse(msg.reply, errors.Duplicate(why), msg.headers)
                return
            # The owner is gone (or holds nothing at an unchanged revision): adopt.
            try:
                adopted = await kv.replace(key, mine, rev)
            except Exception as exc:
                self.registry.failed(exc)
                break
            if adopted is None:
                continue  # another gateway wrote first: look again
            self.adopted += 1
            for node_id in self.engine.fleet.serving(request.capability, request.model):
                await self.wire.cancel_job(node_id, ident[1], found.job_id)
            await self._run(ident, key, adopted, job_id, run)
            return
        await run("")  # unregistered: the bucket does not answer (or the key is contended)

    async def _run(self, ident: Ident, key: str, revision: int, job_id: str, run: Run) -> None:
        self.held[ident] = (key, revision)
        flight = None
        try:
            flight = await run(job_id)
        finally:  # refused before anything ran (tenant limits), or failed: let go of it
            if flight is None and self.held.pop(ident, None) is not None:
                self._write(lambda kv: kv.delete_later(key, revision))

    async def _changed(self, kv: KvRegistry, key: str, revision: int) -> None:
        """Wait (bounded, polling) until the claim under ``key`` is past ``revision``."""
        delay = 0.01
        while delay < 0.5:
            await asyncio.sleep(delay)
            if (await kv.read(key))[1] != revision:
                return
            delay *= 2

    async def _replay(self, claim: Claim, msg: Msg) -> None:
        answer = claim.answer
        assert answer is not None  # decide() said REPLAY
        hdrs = replay_headers(answer, trace_of(msg.headers))
        await self.wire.replay_answer(msg.reply, answer.chunks, answer.data, hdrs)
        self.replayed += 1

    # -- takeovers -------------------------------------------------------------------------

    async def _ask(self, owner: str, ident: Ident, digest: bytes, reply: str) -> Taken:
        """Ask ``owner`` to take the resend over onto ``reply``."""
        ask = Takeover(tenant_id=ident[0], request_id=ident[1], digest=digest.hex(), reply=reply)
        if owner == self.gateway_id:
            return await self.take(ask, wait=False)
        try:
            msg = await self.nc.request(
                self.subjects.takeover(owner), encoder.encode(ask), timeout=ASK_TIMEOUT_S
            )
        except nats.errors.NoRespondersError:
            return Taken.GONE
        except Exception:  # no answer in time, or our own connection is down
            return Taken.SILENT
        try:
            return takeover_reply_decoder.decode(msg.data).status
        except msgspec.DecodeError:
            return Taken.SILENT

    async def take(self, ask: Takeover, wait: bool = True) -> Taken:
        """The owner's side: take a resend over if this gateway holds its request."""
        ident = (ask.tenant_id, ask.request_id)
        claiming = self.pending.get(ident)
        if wait and claiming is not None:  # its claim is being made here: let it settle
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ASK_TIMEOUT_S / 2):
                    await claiming.wait()
        held = self.engine.by_ident.get(ident)
        if held is None or held.done or held.sink is not None:
            return Taken.UNKNOWN
        if held.digest.hex() != ask.digest:
            return Taken.REFUSED
        await self.wire.take_over(held, ask.reply)
        return Taken.TAKEN

    async def on_takeover(self, msg: Msg) -> None:
        """``fed.takeover.<this gateway>``: another gateway received a resend."""
        if not msg.reply:
            return
        try:
            ask = takeover_decoder.decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return
        status = await self.take(ask)
        await self.nc.publish(msg.reply, encoder.encode(TakeoverReply(status=status)))

    # -- a flight's end (gateway.answers.ClaimHooks) ---------------------------------------

    async def finished(self, flight: Flight, data: bytes, headers: dict[str, str]) -> None:
        key, revision = self.held.pop(flight.ident)
        answer, why = answer_of(flight.stream, data, flight.chunk_log, headers, flight.gapped)
        done = Claim(
            owner=self.gateway_id, digest=flight.digest, state=State.DONE,
            job_id=flight.job_id, answer=answer, unreplayable=why, at_s=time.time(),
        )  # fmt: skip
        await self._apply(lambda kv: kv.replace_later(key, done, revision))  # a publish

    def dropped(self, flight: Flight) -> None:
        held = self.held.pop(flight.ident, None)
        if held is not None:
            key, revision = held
            self._write(lambda kv: kv.delete_later(key, revision))

    # -- the background writer -------------------------------------------------------------

    def _write(self, op: Write) -> None:
        self._writes.append(op)
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Write the claims' ends, batch by batch, off the callers' paths."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._writes = self._writes, []
            for op in batch:  # publishes: none waits for JetStream
                await self._apply(op)
            if not self._writes:
                self._idle.set()

    async def _apply(self, op: Write) -> None:
        kv = self.registry.current()
        if kv is None:
            return  # the bucket is away: the claim expires with its TTL
        try:
            await op(kv)
        except Exception as exc:
            self.registry.failed(exc)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Let the writes queued so far land (bounded): a stopping gateway's interrupted
        requests are deleted, not left running until their TTL."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
