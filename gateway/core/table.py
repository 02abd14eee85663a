"""The flights one gateway holds: by key, by identity, and the capacity queue.

A flight's key is a short token, the middle of its reply subjects
(``<inbox>.<key>.<tag>``); its identity is (tenant, request id), unique among the
flights held (docs/protocol.md, "Request identity"). The queue holds the flights that
wait for capacity: by fair share across tenants, or oldest first
(gateway/core/fairqueue.py). No I/O, no clock: times are arguments.
"""

from __future__ import annotations

import contextlib

from gateway.core.fairqueue import FairQueue
from gateway.core.flight import QUEUED, Flight
from shared import messages as m


class FlightTable:
    """Every flight held, each in exactly the tables its phase says."""

    __slots__ = ("_next", "by_ident", "flights", "inbox", "job_prefix", "poison_after", "waiting")

    def __init__(
        self, inbox: str, job_prefix: str, poison_after: int = 2, waiting: FairQueue | None = None
    ) -> None:
        self.inbox = inbox
        """Prefix of every flight's reply subjects."""
        self.job_prefix = job_prefix
        """Makes job ids unique across gateways (a node keys its jobs by them)."""
        self.poison_after = poison_after
        self.flights: dict[str, Flight] = {}
        """Flights by key."""
        self.by_ident: dict[tuple[str, str], Flight] = {}
        """Flights by identity: (tenant, request id)."""
        self.waiting = waiting if waiting is not None else FairQueue()
        """The capacity queue."""
        self._next = 0

    def __len__(self) -> int:
        return len(self.flights)

    def open(
        self,
        request: m.InferRequest,
        raw: bytes,
        request_id: str,
        reply: str,
        now: float,
        timeout_s: float,
        digest: bytes = b"",
    ) -> Flight:
        """A new flight for ``request`` (its capability set), held from now on."""
        self._next += 1
        key = f"{self._next:x}"
        flight = Flight(
            key,
            request_id,
            request.capability,
            request,
            raw,
            reply,
            now,
            now + timeout_s,
            self.poison_after,
            request.tenant_id or "",
            self.job_prefix + key,
            digest,
            f"{self.inbox}.{key}.",
        )  # fmt: skip
        self.flights[key] = flight
        self.by_ident[flight.ident] = flight
        return flight

    def enqueue(self, flight: Flight, now: float) -> None:
        """``flight`` waits for capacity, behind the others."""
        flight.enqueue(now)
        self.waiting.append(flight)

    def close(self, flight: Flight, tokens: int = 0) -> None:
        """``flight`` is over: out of every table (and the queue), ``Phase.DONE``; its
        tenant's fair-share charge settled with the ``tokens`` it produced."""
        if flight.phase is QUEUED:
            with contextlib.suppress(ValueError):
                self.waiting.remove(flight)
        self.waiting.settle(flight, flight.prompt_tokens, tokens)
        flight.finish()
        self.flights.pop(flight.key, None)
        if self.by_ident.get(flight.ident) is flight:
            del self.by_ident[flight.ident]
