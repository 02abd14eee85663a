"""What arrives on the gateway's inbox (``<inbox>.<key>.<tag>``), handed to the engine.

    tag = the current attempt's number   the node's answer: a chunk (relayed with the
                                         caller's seq; a gap fails the attempt), the
                                         terminal message or result (finish_ok), an
                                         error (judged: lifecycle.read_node_error), or
                                         "no responders" (the node is gone)
    tag = "d<attempt>"                   a direct node's copy of what it sent the caller
                                         itself (docs/protocol.md, "Direct replies"):
                                         read, never re-published (unless a resend moved
                                         the caller since the dispatch)
    tag = "p<attempt>"                   the answer to a liveness ping ("no responders" =
                                         the node is gone)
    tag = "c"                            "no responders" on a relayed chunk: the caller
                                         is gone
    tag = "a"                            a caller asking whether its request is held here

One callback, no task per message: chunks are relayed in the order they arrive.
"""

from __future__ import annotations

import time

from nats.aio.msg import Msg

from gateway.core.flight import ATTEMPT, Attempt, Flight
from gateway.core.steps import Failure
from gateway.core.verdicts import read_node_error
from gateway.engine import Engine
from gateway.outcome import Blame
from gateway.wire import node_seq, renumber
from shared import errors
from shared import headers as h
from shared import messages as m


class Relay:
    """The callback of the gateway's inbox subscription."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.wire = engine.wire
        self.clock = engine.clock
        self._skip = len(engine.inbox) + 1
        self._flights = engine.flights  # the same dict for the engine's life
        self._publish = engine.wire.nc.publish

    async def on_reply(self, msg: Msg) -> None:
        """One message on ``<inbox>.>``."""
        t0 = time.perf_counter_ns()
        key, _, tag = msg.subject[self._skip :].partition(".")
        if tag == "a":  # a caller asking whether this gateway still holds its request
            if msg.reply:
                await self.wire.alive(msg.reply, key in self._flights)
            return
        flight = self._flights.get(key)
        if flight is None:
            return  # late message of a finished request
        attempt = flight.current
        if attempt is None or tag != attempt.tag:
            if attempt is not None and tag == attempt.dtag:
                await self._copy(flight, attempt, msg, t0)
            else:
                await self._side_reply(flight, tag, msg)
            return
        if flight.phase is not ATTEMPT:
            return  # the attempt was already given up (timed out, stalled): ignore its rest
        hdrs = msg.headers
        data = msg.data
        if hdrs:
            if hdrs.get(h.NATS_STATUS) == "503":
                await self.engine.failed(flight, _gone(attempt.node_id))
                return
            if h.FED_ERROR in hdrs or h.ERROR_CODE in hdrs:
                await self._node_error(flight, attempt.node_id, hdrs)
                return
        now = self.clock()
        attempt.last_activity = now
        attempt.pinged = 0.0
        if attempt.first_chunk_at is None:
            attempt.first_chunk_at = now
        if not flight.request.stream:
            if data:
                await self.engine.finish_ok(flight, data, hdrs)
            return
        if not data:  # terminal message of a stream
            await self.engine.finish_ok(flight, b"", hdrs)
            return
        expected = flight.seq - attempt.offset + 1  # the node numbers its chunks from 1
        if attempt.offset:  # after a failover: the caller's seq goes on from there
            chunk = m.chunk_decoder.decode(data)
            if chunk.seq != expected:
                await self._chunk_lost(flight, expected, chunk.seq)
                return
            flight.seq += 1
            data = renumber(chunk, flight.seq)
        else:
            seq = node_seq(data)
            if seq != expected:
                await self._chunk_lost(flight, expected, seq)
                return
            flight.seq += 1
        flight.chunk_log.append(data)
        # The one publish not made in gateway/wire.py: the node's chunk forwarded as it
        # came (a function call less per token on the hot path).
        sink = flight.sink
        if sink is None:
            await self._publish(flight.reply, data, reply=flight.caller_probe)
        else:
            sink.put_nowait((data, None))
        flight.overhead_ns += time.perf_counter_ns() - t0

    async def _copy(self, flight: Flight, attempt: Attempt, msg: Msg, t0: int) -> None:
        """A direct node's copy of a chunk or of its success answer, which the caller got
        from the node itself: the flight's bookkeeping only, no publish."""
        if flight.phase is not ATTEMPT:
            return
        data = msg.data
        now = self.clock()
        attempt.last_activity = now
        attempt.pinged = 0.0
        if attempt.first_chunk_at is None:
            attempt.first_chunk_at = now
        delivered = attempt.direct == flight.reply and flight.sink is None
        if not data or not flight.request.stream:  # the terminal message, or a result
            await self.engine.finish_ok(flight, data, msg.headers, delivered)
            return
        seq = node_seq(data)  # the node numbers as the caller sees (DirectReply.seq_from)
        if seq <= flight.seq:
            return  # a repeat: nothing new
        if seq != flight.seq + 1:
            # Lost on the way here (the caller may have it, or sees the gap itself): what
            # the caller holds is unknown now, so this stream cannot resume elsewhere.
            flight.gapped = True
        flight.seq = seq
        flight.chunk_log.append(data)
        if not delivered:  # a resend moved the caller after the dispatch: relay
            if flight.sink is None:
                await self._publish(flight.reply, data, reply=flight.caller_probe)
            else:
                flight.sink.put_nowait((data, None))
        flight.overhead_ns += time.perf_counter_ns() - t0

    async def _chunk_lost(self, flight: Flight, expected: int, got: int) -> None:
        """A gap in the node's numbering (a message lost in transit, e.g. a NATS server
        died): continue from what the caller has, on another node, without the gap."""
        why = f"chunk {expected} from {flight.node_id} lost (got {got})"
        await self.engine.failed(flight, Failure(errors.Interrupted(why), Blame.NONE))

    async def _side_reply(self, flight: Flight, tag: str, msg: Msg) -> None:
        status = msg.headers.get(h.NATS_STATUS) if msg.headers else None
        if status != "503":
            return
        attempt = flight.current
        if tag == "c":  # caller-gone probe on a relayed chunk
            await self.engine.caller_gone(flight)
        elif (
            attempt is not None and tag == "p" + attempt.tag and flight.phase is ATTEMPT
        ):  # liveness ping: the node is gone
            await self.engine.failed(flight, _gone(attempt.node_id))

    async def _node_error(self, flight: Flight, node_id: str, hdrs: dict[str, str]) -> None:
        """The node answered an error: blame it, the caller, or nobody."""
        engine = self.engine
        now = self.clock()
        verdict, failure, busy_s = read_node_error(hdrs, flight.deadline - now)
        if not verdict.retry_elsewhere:  # the caller's own request is at fault
            engine.release(flight, success=None)
            await engine.finish_error(flight, failure.error)
            return
        if verdict.busy:
            engine.cooldowns.hold(node_id, now + busy_s)
        await engine.failed(flight, failure)


def _gone(node_id: str) -> Failure:
    return Failure(errors.NodeUnreachable(node_id), Blame.NOW)
