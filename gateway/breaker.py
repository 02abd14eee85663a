"""Per-node circuit breakers with a bounded number of half-open probes.

    CLOSED --failure_threshold consecutive failures--> OPEN
    OPEN --reset_timeout_s after the last failure (seen lazily by is_open)--> HALF_OPEN
    HALF_OPEN --half_open_successes successes--> CLOSED
    HALF_OPEN --any failure--> OPEN (timer restarts)
    OPEN --success (a late reply)--> CLOSED

In HALF_OPEN at most ``half_open_max_probes`` requests are in flight at once
(``try_acquire``); an outcome or ``release`` gives the slot back. Unknown nodes read
CLOSED without creating an entry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.clock import MONOTONIC, Clock


class CircuitState(enum.Enum):
    """State of one node's circuit."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Thresholds of the breaker (times in seconds)."""

    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    half_open_successes: int = 3
    half_open_max_probes: int = 1


class _Circuit:
    __slots__ = ("failures", "last_failure", "probes", "state", "successes")

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self.last_failure: float | None = None


class CircuitBreaker:
    """One circuit per node."""

    def __init__(self, config: CircuitBreakerConfig | None = None, clock: Clock = MONOTONIC):
        self.config = config or CircuitBreakerConfig()
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def _expired(self, c: _Circuit) -> bool:
        return c.last_failure is None or (
            self._clock() - c.last_failure >= self.config.reset_timeout_s
        )

    def _advance(self, c: _Circuit) -> None:
        """The lazy OPEN -> HALF_OPEN transition."""
        if c.state is CircuitState.OPEN and self._expired(c):
            c.state = CircuitState.HALF_OPEN
            c.successes = 0
            c.probes = 0

    def is_open(self, node_id: str) -> bool:
        """True while OPEN; moves an expired OPEN circuit to HALF_OPEN (and answers False)."""
        c = self._circuits.get(node_id)
        if c is None:
            return False
        self._advance(c)
        return c.state is CircuitState.OPEN

    def state(self, node_id: str) -> CircuitState:
        """Read-only state; an OPEN circuit past its timeout reads HALF_OPEN (no write)."""
        c = self._circuits.get(node_id)
        if c is None:
            return CircuitState.CLOSED
        if c.state is CircuitState.OPEN and self._expired(c):
            return CircuitState.HALF_OPEN
        return c.state

    def admits(self, node_id: str) -> bool:
        """Read-only: would ``try_acquire`` succeed now?"""
        c = self._circuits.get(node_id)
        if c is None or c.state is CircuitState.CLOSED:
            return True
        if c.state is CircuitState.OPEN:
            if not self._expired(c):
                return False
            return self.config.half_open_max_probes > 0
        return c.probes < self.config.half_open_max_probes

    def try_acquire(self, node_id: str) -> bool:
        """Take permission to send: CLOSED yes; HALF_OPEN if a probe slot is free; OPEN no."""
        c = self._circuits.get(node_id)
        if c is None:
            return True
        self._advance(c)
        if c.state is CircuitState.CLOSED:
            return True
        if c.state is CircuitState.OPEN or c.probes >= self.config.half_open_max_probes:
            return False
        c.probes += 1
        return True

    def release(self, node_id: str) -> None:
        """Give back a probe slot without an outcome (e.g. the request was cancelled)."""
        c = self._circuits.get(node_id)
        if c is not None and c.probes > 0:
            c.probes -= 1

    def record_success(self, node_id: str, *, held: bool = True) -> None:
        """A request succeeded (releases a held probe slot; ``held=False``: another
        gateway's request, which held no slot here)."""
        c = self._circuits.setdefault(node_id, _Circuit())
        if held and c.probes > 0:
            c.probes -= 1
        if c.state is CircuitState.HALF_OPEN:
            c.successes += 1
            if c.successes >= self.config.half_open_successes:
                self._close(c)
        elif c.state is CircuitState.OPEN:
            self._close(c)
        else:
            c.failures = 0

    def record_failure(self, node_id: str, *, held: bool = True) -> None:
        """A request failed (releases a held probe slot; ``held=False``: another
        gateway's request, which held no slot here)."""
        c = self._circuits.setdefault(node_id, _Circuit())
        if held and c.probes > 0:
            c.probes -= 1
        c.failures += 1
        c.last_failure = self._clock()
        if c.state is CircuitState.HALF_OPEN:
            c.state = CircuitState.OPEN
            c.successes = 0
        elif c.state is CircuitState.CLOSED and c.failures >= self.config.failure_threshold:
            c.state = CircuitState.OPEN

    @staticmethod
    def _close(c: _Circuit) -> None:
        c.state = CircuitState.CLOSED
        c.failures = 0
        c.successes = 0
        c.probes = 0

    def failures(self, node_id: str) -> int:
        """Failures counted since the circuit last closed."""
        c = self._circuits.get(node_id)
        return c.failures if c is not None else 0

    def all_states(self) -> list[tuple[str, CircuitState]]:
        """(node_id, state) for nodes with an entry (read-only states)."""
        return [(n, self.state(n)) for n in self._circuits]

    def forget(self, node_id: str) -> None:
        """Drop a node's circuit (it left the federation)."""
        self._circuits.pop(node_id, None)
