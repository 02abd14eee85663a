"""How a stream's client reads chunks that may come straight from nodes (docs/protocol.md,
"Direct replies"): which chunk to take, which to drop, when the stream cannot go on, and
which success terminal is not the end. Pure functions, used by ``shared/exchange.py``.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from shared import errors
from shared import headers as h
from shared import messages as m


def take(chunk: m.DirectChunk, have: int, latest: int) -> bool:
    """Whether a stream that has ``have`` chunks takes ``chunk`` (``latest``: the newest
    attempt seen on a direct chunk); raises ``Interrupted`` when the stream cannot go on.

    Dropped: a chunk already received (a late duplicate) and a chunk of an older attempt
    than one already heard from (its node was given up on). A gap, or a newer attempt
    resuming before what this stream already holds (the gateway failed over without
    seeing everything the caller got), ends the stream.
    """
    if chunk.attempt and chunk.attempt < latest:
        return False
    if chunk.seq <= have:
        if chunk.attempt > latest > 0 or (chunk.attempt and not latest and have):
            raise errors.Interrupted(
                f"attempt {chunk.attempt} resumed at chunk {chunk.seq}, after {have} received"
            )
        return False
    if chunk.seq != have + 1:
        raise errors.Interrupted(f"chunk {have + 1} lost (got seq {chunk.seq})")
    return True


def stale_terminal(msg: Msg, latest: int) -> bool:
    """A success terminal of an attempt older than one whose chunks came since (its node
    finished directly after the gateway had failed over): not this stream's end."""
    hdrs = msg.headers
    if not latest or not hdrs or hdrs.get(h.STATUS) != "ok":
        return False
    attempts = hdrs.get(h.ATTEMPTS, "")
    return attempts.isdigit() and int(attempts) < latest
