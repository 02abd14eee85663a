"""The steps a request can take next, and the events that lead to them (plain values).

    Route       route and send the next attempt now
    Retry       another node after a backoff (before any chunk was relayed)
    Failover    a stream that relayed chunks continues elsewhere, from ``resume``
    WaitBusy    every node left is busy: route again after their Retry-After
    Enqueue     every eligible node is full: wait in the gateway's capacity queue
    Stay        still full: a queued request keeps its place
    Finish      answer the caller with an error

``Failure`` is why an attempt ended without an answer; ``Timer`` what the sweeper's
tick finds due. ``gateway.core.lifecycle`` decides; ``gateway.engine`` carries out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.outcome import Blame
from shared import errors
from shared import messages as m


@dataclass(frozen=True, slots=True)
class Route:
    """Route and send the next attempt now."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Another node, after ``delay_s`` (tenacity's backoff; 0 = now)."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Failover:
    """Continue a stream that relayed chunks on another node, from ``resume``."""

    resume: m.Resume


@dataclass(frozen=True, slots=True)
class WaitBusy:
    """Every node left is busy: route again after ``delay_s`` (their Retry-After)."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Every eligible node is at capacity: wait in the gateway's queue."""


@dataclass(frozen=True, slots=True)
class Stay:
    """Still no capacity for a queued request: it keeps its place."""


@dataclass(frozen=True, slots=True)
class Finish:
    """Answer the caller with ``error``."""

    error: errors.FedError


Step = Route | Retry | Failover | WaitBusy | Enqueue | Stay | Finish
ROUTE, ENQUEUE, STAY = Route(), Enqueue(), Stay()


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt ended without an answer, and whom it counts against."""

    error: errors.FedError
    blame: Blame
    code: int | None = None
    kind: str | None = None
    node_reported: bool = False
    """The node itself sent the error (its job is over: nothing to cancel there)."""
    late: bool = False
    """No first chunk in time from a node that answers its pings (slow, not gone)."""


class Timer(enum.Enum):
    """What the sweeper's tick finds due for one flight."""

    NONE = 0
    DEADLINE = 1
    """The request's deadline passed: ``504``, whatever the phase."""
    FIRST_CHUNK = 2
    """No first chunk (or whole reply) within the attempt's first-chunk limit."""
    STALL = 3
    """No chunk for ``stall_timeout_s`` after the first: the node's fault."""
    PING = 4
    """Silent for ``liveness_probe_s``: ask the node whether it lives."""


NO_TIMER, DEADLINE, FIRST_CHUNK, STALL, PING = Timer
"""The timers as module constants (an Enum class lookup is slow in Python 3.11, and the
sweeper asks about every flight on every tick)."""
