"""Clocks for the pure core: a monotonic one in production, a fake one in tests."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""A function returning monotonic seconds (``time.monotonic`` in production)."""

MONOTONIC: Clock = time.monotonic
"""The default clock."""


class FakeClock:
    """A clock that moves only when told to (tests advance it instead of sleeping)."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds

    def set(self, now: float) -> None:
        """Jump to an absolute time."""
        self.now = now
