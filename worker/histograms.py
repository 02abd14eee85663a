"""Cumulative latency histograms: their quantiles, and the part of them that is recent.

A ``Buckets`` is a Prometheus histogram as read: ``(upper bound in seconds,
observations <= bound)`` pairs sorted by bound, the last bound ``+Inf``, counts
cumulative since the engine started. ``HistogramWindow`` differences successive ones
over about ``WINDOW_S`` seconds so that percentiles are recent, not lifetime ones.
"""

from __future__ import annotations

import math
from collections import deque

Buckets = tuple[tuple[float, float], ...]
"""A cumulative histogram: (upper bound in seconds, observations <= bound), sorted by
bound, the last bound ``+Inf``."""

WINDOW_S = 60.0
"""How far back the latency percentiles look."""


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0..1) of a cumulative histogram, in its unit, interpolated
    linearly inside the bucket as Prometheus' ``histogram_quantile`` does (the first
    bucket starts at 0; one landing in ``+Inf`` is the highest finite bound). None
    when it holds no observation."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class HistogramWindow:
    """Cumulative histograms seen over time; ``recent()`` is what was observed within
    about ``window_s`` (the newest one minus the oldest kept). With a single one yet,
    it is the engine's whole history. A count that went down (the engine restarted)
    starts the window afresh."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, Buckets]] = deque()

    def add(self, now: float, buckets: Buckets) -> None:
        """Record the histogram read at ``now`` (monotonic seconds)."""
        if self._seen and not _grew(self._seen[-1][1], buckets):
            self._seen.clear()
        self._seen.append((now, buckets))
        while len(self._seen) > 2 and self._seen[1][0] <= now - self.window_s:
            self._seen.popleft()

    def recent(self) -> Buckets | None:
        """The observations of the window, cumulative by bound."""
        if not self._seen:
            return None
        newest = self._seen[-1][1]
        if len(self._seen) == 1:
            return newest
        oldest = dict(self._seen[0][1])
        return tuple((bound, count - oldest.get(bound, 0.0)) for bound, count in newest)

    def percentiles_ms(self) -> tuple[float, float] | None:
        """(p50, p90) of the window in milliseconds, or None when it saw nothing."""
        recent = self.recent()
        p50 = quantile(0.5, recent) if recent else None
        p90 = quantile(0.9, recent) if recent else None
        if p50 is None or p90 is None:
            return None
        return round(p50 * 1000, 3), round(p90 * 1000, 3)


def _grew(old: Buckets, new: Buckets) -> bool:
    before = dict(old)
    return set(before) == {b for b, _ in new} and all(c >= before[b] for b, c in new)
