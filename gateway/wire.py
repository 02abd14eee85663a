"""Every message the gateway sends on the data path, built and published in one place.

    to a node      dispatch (the caller's body untouched inside), cancel, liveness ping
    to a caller    ack, the one answer (result, terminal message, error), an early
                   refusal (before a request is accepted), a resend's takeover and
                   replay, a stored answer replayed, the answer to a liveness question

A caller is a NATS reply subject, or a queue inside this process (``Flight.sink``): the
same bytes and headers reach both. The chunks of a stream are the one exception, for
the hot path's sake: ``gateway/relay.py`` forwards each as the node sent it (re-encoded
only when a failover shifted ``seq``; ``renumber`` here), with ``Flight.caller_probe``
as its reply subject.

Direct replies (docs/protocol.md): a dispatch to a NATS caller carries ``direct``
(``direct_reply`` here); a node that reads it sends its chunks and its success answer
to the caller itself, and the gateway publishes nothing per chunk: it only reads the
copies (``gateway/relay.py``) and answers errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

import msgspec
from nats.aio.client import Client

from gateway.core.flight import Attempt, Flight
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.connection import RateLimitedLog
from shared.subjects import Subjects

log = logging.getLogger("fedgate.gateway")

UNKNOWN = {h.STATUS: "unknown"}
"""Answer to a liveness ping about a request this gateway does not hold (any more)."""

ENVELOPE_BYTES = 4096
"""Room kept under NATS' max_payload for the dispatch around a request body."""


def max_body(configured: int, server_max_payload: int) -> int:
    """Largest request body: the configured limit, capped by the server's
    ``max_payload`` less the dispatch envelope (0 = the server's is unknown)."""
    if server_max_payload > ENVELOPE_BYTES:
        return min(configured, server_max_payload - ENVELOPE_BYTES)
    return configured


def dispatch_body(
    flight: Flight,
    attempt: Attempt,
    resume: m.Resume | None,
    remaining_ms: int,
    direct: bytes = b"",
) -> bytes:
    """The dispatch of ``attempt``: the caller's body as it came, and the additions
    (``direct``: an encoded ``DirectReply``, or nothing)."""
    return b"".join((
        b'{"request":', flight.raw,
        b',"attempt":', attempt.tag.encode(),
        b',"resume":', m.encode(resume) if resume is not None else b"null",
        b',"capability":"', flight.capability.encode(),
        b'","request_id":"', flight.request_id.encode(),
        b'","timeout_ms":', str(remaining_ms).encode(),
        b',"job_id":"', flight.job_id.encode(),
        b'","direct":' if direct else b'"', direct, b"}",
    ))  # fmt: skip


def direct_reply(flight: Flight, attempt: Attempt, fresh: bool) -> bytes:
    """The ``direct`` part of ``attempt``'s dispatch (an encoded ``DirectReply``): the
    node answers ``flight.reply`` itself, with the headers the gateway would have put on
    the answer (``fresh``: the first dispatch of a request just accepted, whose overhead
    is still running). Built by hand: it is on every request's path."""
    spent = flight.overhead_ns
    if fresh and flight.t0_ns:
        spent += time.perf_counter_ns() - flight.t0_ns
    attempt.direct = flight.reply
    enc = m.encoder.encode
    trace = flight.trace_headers
    return b"".join((
        b'{"to":', enc(flight.reply),
        b',"observe":', enc(flight.inbox + attempt.dtag),
        b',"probe":', enc(flight.caller_probe),
        b',"seq_from":', str(flight.seq).encode(),
        b',"headers":{"Fed-Attempts":"', attempt.tag.encode(),
        b'","Fed-Request-Id":', enc(flight.request_id),
        b',"Fed-Overhead-Us":"', str(spent // 1000).encode(),
        b'"', b"," + enc(trace)[1:-1] if trace else b"", b"}}",
    ))  # fmt: skip


def node_seq(data: bytes) -> int:
    """The ``seq`` of a node's chunk; fast for our own workers' field order."""
    if data.startswith(b'{"seq":'):
        end = data.find(b",", 7)
        if end > 7 and data[7:end].isdigit():
            return int(data[7:end])
    try:
        return m.chunk_decoder.decode(data).seq
    except msgspec.DecodeError:
        return -1


def renumber(chunk: m.Chunk, seq: int) -> bytes:
    """A node's chunk with the caller's ``seq`` (tool calls, logprobs and extras kept)."""
    return m.encode(msgspec.structs.replace(chunk, seq=seq))


def ok_headers(
    flight: Flight, node_headers: dict[str, str], tokens: int, t0_ns: int
) -> dict[str, str]:
    """Headers of a successful answer (``t0_ns``: when the gateway's last work began)."""
    attempt = flight.current
    hdrs = {
        h.SERVED_BY: "" if attempt is None else attempt.node_id,
        h.ATTEMPTS: str(flight.attempts),
        h.OVERHEAD_US: str((flight.overhead_ns + time.perf_counter_ns() - t0_ns) // 1000),
        h.REQUEST_ID: flight.request_id,
    }
    if flight.request.stream:
        hdrs[h.STATUS] = "ok"
        hdrs[h.TOKENS] = str(tokens)
        hdrs[h.FINISH_REASON] = node_headers.get(h.FINISH_REASON, "stop")
        for name, value in node_headers.items():  # additions a node sends (usage, ...)
            if name.startswith("Fed-") and name not in hdrs:
                hdrs[name] = value
    if flight.trace_headers:
        hdrs.update(flight.trace_headers)
    return hdrs


def error_headers(flight: Flight, error: errors.FedError) -> dict[str, str]:
    """Headers of an error answer to an accepted request."""
    hdrs = error.headers()
    hdrs[h.ATTEMPTS] = str(flight.attempts)
    hdrs[h.REQUEST_ID] = flight.request_id
    node_id = flight.node_id
    if node_id:
        hdrs[h.SERVED_BY] = node_id
    if flight.trace_headers:
        hdrs.update(flight.trace_headers)
    return hdrs


def trace_of(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The caller's ``traceparent``/``tracestate``, to carry on every hop (None: none)."""
    if not headers or h.TRACEPARENT not in headers:
        return None
    return {k: v for k, v in headers.items() if k in (h.TRACEPARENT, h.TRACESTATE)}


class Wire:
    """Publishes the data path's messages on one connection."""

    def __init__(self, nc: Client, subjects: Subjects, gateway_id: str) -> None:
        self.nc = nc
        self.subjects = subjects
        self.gateway_id = gateway_id
        self._noisy = RateLimitedLog(log)

    # -- to nodes ------------------------------------------------------------------------

    def dispatch(
        self,
        subject: str,
        flight: Flight,
        attempt: Attempt,
        body: bytes,
        headers: dict[str, str] | None,
    ) -> Awaitable[None]:
        """The publish (to await) of ``attempt``'s dispatch on ``subject``
        (``Subjects.node_infer``); the node answers on ``<inbox>.<key>.<attempt>``."""
        return self.nc.publish(subject, body, reply=flight.inbox + attempt.tag, headers=headers)

    async def cancel(self, node_id: str, flight: Flight) -> None:
        """Tell ``node_id`` to stop ``flight``'s job."""
        await self.cancel_job(node_id, flight.request_id, flight.job_id)

    async def cancel_job(self, node_id: str, request_id: str, job_id: str) -> None:
        """Tell ``node_id`` to stop the job ``job_id`` (e.g. a gone gateway's)."""
        body = m.encode(m.CancelNode(request_id=request_id, job_id=job_id))
        try:
            await self.nc.publish(self.subjects.node_cancel(node_id), body)
        except Exception as exc:  # closed or disconnected with a full buffer
            self._noisy.warning("cancel", "could not cancel on %s: %s", node_id, exc)

    async def ping(self, flight: Flight, attempt: Attempt) -> None:
        """Ask the attempt's node whether it lives ("no responders" = gone)."""
        await self.nc.publish(
            self.subjects.node_ping(attempt.node_id), b"", reply=f"{flight.inbox}p{attempt.tag}"
        )

    # -- to callers ----------------------------------------------------------------------

    async def answer(self, flight: Flight, data: bytes, hdrs: dict[str, str]) -> None:
        """The one answer of ``flight`` (result, terminal message or error)."""
        sink = flight.sink
        if sink is not None:
            sink.put_nowait((data, hdrs))
            return
        try:
            await self.nc.publish(flight.reply, data, headers=hdrs)
        except Exception as exc:
            self._noisy.warning("reply", "could not answer %s: %s", flight.reply, exc)

    async def refuse(
        self, reply: str, error: errors.FedError, caller_headers: dict[str, str] | None
    ) -> None:
        """An error to a request that was not accepted (no flight), trace context kept."""
        hdrs = error.headers()
        if caller_headers:
            for name in (h.TRACEPARENT, h.TRACESTATE):
                value = caller_headers.get(name)
                if value is not None:
                    hdrs[name] = value
        await self._publish(reply, b"", hdrs)

    async def moved(self, flight: Flight) -> None:
        """A ``409 duplicate`` terminal to the caller a resend took ``flight`` from:
        whoever still listens there learns where the answer went."""
        error = errors.Duplicate(
            f"request_id {flight.request_id} was resent with the same body: "
            "the answer goes to the resending caller"
        )
        hdrs = error.headers()
        hdrs[h.REQUEST_ID] = flight.request_id
        if flight.sink is not None:
            flight.sink.put_nowait((b"", hdrs))
        else:
            await self._publish(flight.reply, b"", hdrs)

    def ack(self, flight: Flight) -> Awaitable[None]:
        """The publish (to await) acknowledging a request (asked for with ``Fed-Ack``):
        who holds it, how to ping."""
        return self.nc.publish(flight.reply, b"", headers={
            h.GATEWAY: self.gateway_id,
            h.LIVENESS: flight.inbox + "a",
            h.REQUEST_ID: flight.request_id,
        })  # fmt: skip

    async def take_over(self, flight: Flight, reply: str) -> None:
        """A resend (same caller, same bytes) takes ``flight`` over on ``reply``: the
        subject it leaves is told (409), the new one is acknowledged and sent the chunks
        relayed so far."""
        if flight.reply != reply:
            await self.moved(flight)
        flight.reply = reply
        await self.ack(flight)
        await self.replay(flight)

    async def replay_answer(
        self, reply: str, chunks: list[bytes], data: bytes, hdrs: dict[str, str]
    ) -> None:
        """A stored answer (another gateway's, gateway/claims.py) to a resend: a stream's
        chunks then its terminal message, or a result."""
        for chunk in chunks:
            await self._publish(reply, chunk, None)
        await self._publish(reply, data, hdrs)

    async def replay(self, flight: Flight) -> None:
        """Every chunk relayed so far, again, to the caller (after a resend took it over)."""
        sink = flight.sink
        for item in flight.chunk_log:  # exactly the bytes relayed, seq 1, 2, ...
            if sink is not None:
                sink.put_nowait((item, None))
            else:
                await self.nc.publish(flight.reply, item, reply=flight.caller_probe)

    async def alive(self, reply: str, known: bool) -> None:
        """Answer a caller asking whether this gateway still holds its request."""
        await self.nc.publish(reply, b"", headers=None if known else UNKNOWN)

    async def _publish(self, reply: str, data: bytes, hdrs: dict[str, str] | None) -> None:
        try:
            await self.nc.publish(reply, data, headers=hdrs)
        except Exception as exc:
            self._noisy.warning("reply", "could not answer %s: %s", reply, exc)
