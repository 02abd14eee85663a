"""What a failed attempt means: who is to blame, and what the request does next.

Pure functions and one small record, no I/O and no clock of their own (times are
arguments), so that every path is unit-tested without NATS (tests/core/test_outcome.py).
The service (gateway/service.py) asks them after each failed attempt.

Blame (docs/routing.md, "Blame"):

    the node is gone, silent or stalled          -> NOW       counts at once
    the node reports it cannot serve what it
      advertises (node_unavailable: upstream 404,
      401/403, engine down)                       -> NOW
    the node reports an engine failure (5xx,
      internal, its own timeout)                  -> DEFERRED  counts when the request ends,
                                                               unless the request is poison
    no first chunk in time from a node that
      answers its pings (late)                    -> DEFERRED  counts only if another node
                                                               serves the request
    busy (429), draining, superseded, not served  -> NONE      tried elsewhere, no fault
    the caller's request (400, 403, 413) or its
      own deadline                                -> NONE      answered at once

A request whose attempts failed with DEFERRED blame on ``poison_after`` nodes in a row is
*poison* (it breaks every engine it reaches): it is not retried further and those
failures count against no node. Every dispatch, busy answers included, spends the one
retry budget (``max_retries``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shared import errors

CALLER_DEADLINE_S = 0.5
"""A node's own ``timeout`` this close to the request's deadline is the caller's."""


class Blame(enum.Enum):
    """Whether a failed attempt counts against its node."""

    NONE = 0
    NOW = 1
    DEFERRED = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one failed attempt."""

    blame: Blame
    retry_elsewhere: bool
    """False: the request itself is at fault; answer the error now."""
    busy: bool = False
    """The node refused for lack of capacity (honour its Retry-After)."""


def judge_node_error(kind: str, code: int, remaining_s: float) -> Verdict:
    """The verdict on an error a node reported (``Fed-Error`` kind, code), with
    ``remaining_s`` seconds left of the request's deadline."""
    cls = errors.blame(kind, code)
    if not cls.retry_elsewhere:
        return Verdict(Blame.NONE, retry_elsewhere=False)
    if cls is errors.Overloaded:
        return Verdict(Blame.NONE, retry_elsewhere=True, busy=True)
    if not cls.node_fault:
        return Verdict(Blame.NONE, retry_elsewhere=True)
    if cls is errors.Timeout and remaining_s < CALLER_DEADLINE_S:
        return Verdict(Blame.NONE, retry_elsewhere=True)  # the caller's deadline
    if cls is errors.NodeUnavailable:
        return Verdict(Blame.NOW, retry_elsewhere=True)  # misconfigured: its own fault
    return Verdict(Blame.DEFERRED, retry_elsewhere=True)


@dataclass(slots=True)
class BlameLedger:
    """One request's failures whose blame waits for the request's end."""

    poison_after: int = 2
    failures: int = 0
    """DEFERRED failures in a row (a NOW failure resets the run)."""
    pending: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    """Nodes that were only late with their first chunk: blamed if another node served."""

    def record(self, node_id: str, blame: Blame, counted: bool = True, late: bool = False) -> bool:
        """Note a failure on ``node_id``; True when the request has become poison.

        ``counted`` False (e.g. the gateway's NATS link was down) keeps the node out of
        the ledger but still counts the failure toward poison. ``late``: no first chunk
        in time (slow, not failed): it counts against the node only if another node
        then serves the request, and not toward poison.
        """
        if blame is Blame.NOW:
            self.failures = 0
            return False
        if blame is not Blame.DEFERRED:
            return False
        if late:
            if counted:
                self.late.append(node_id)
            return False
        self.failures += 1
        if counted:
            self.pending.append(node_id)
        if self.failures >= self.poison_after:
            self.pending.clear()  # the request's fault: forgive every node
            return True
        return False

    def settle(self, served: bool) -> list[str]:
        """The nodes to blame now that the request ended (not poison): the nodes whose
        reported failures are pending, and the late ones if another node ``served`` it
        (a request that ends in an error anyway proves nothing against a slow node).
        Empties the ledger."""
        out = self.pending + self.late if served else self.pending
        self.pending, self.late = [], []
        return out


def busy_wait(
    now: float,
    deadline: float,
    attempts: int,
    max_retries: int,
    busy_answers: int,
    ready_at: float,
    backoff_s: float,
    backoff_max_s: float,
) -> float | None:
    """Seconds to wait before trying busy nodes again, or None: answer ``429`` now.

    ``ready_at`` is when the first of them leaves its Retry-After; the wait also backs
    off (``backoff_s`` doubling per busy answer, at most ``backoff_max_s``). None when
    the retry budget is spent (``attempts`` dispatches made, ``max_retries + 1`` allowed)
    or the wait would pass the deadline.
    """
    backoff = min(backoff_s * float(1 << max(busy_answers - 1, 0)), backoff_max_s)
    wait = max(ready_at - now, backoff, 0.001)
    if attempts > max_retries or now + wait >= deadline:
        return None
    return wait


def retry_after(now: float, ready_at: float) -> float:
    """The ``Retry-After`` (seconds) to give a caller refused with ``429``."""
    return max(ready_at - now, 0.001)
