"""Windows of timed samples: bounded in count and in age, with exact percentiles.

Samples leave when a window is full (the oldest first) or when they are older than
``max_age_s``, except the newest one, which stays however old it is: a node measured once
keeps its last known figure instead of looking as if it had never been measured.
``NodeSamples`` holds one node's three measures (latency, time per token, tokens/s).
"""

from __future__ import annotations

import bisect
import math
from collections import deque


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class SampleWindow:
    """The last ``size`` samples no older than ``max_age_s`` (0: no age limit)."""

    __slots__ = ("_max_age_s", "_samples", "sorted")

    def __init__(self, size: int, max_age_s: float = 0.0) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, size))
        self._max_age_s = max_age_s
        self.sorted: list[float] = []
        """The values, ascending (read-only for callers)."""

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, now: float, value: float) -> None:
        """Append a sample taken at ``now``."""
        samples = self._samples
        if len(samples) == samples.maxlen:
            self._drop_oldest()
        samples.append((now, value))
        bisect.insort(self.sorted, value)

    def _drop_oldest(self) -> None:
        _, old = self._samples.popleft()
        del self.sorted[bisect.bisect_left(self.sorted, old)]

    def expire(self, now: float) -> bool:
        """Drop samples older than the age limit (never the newest); True if any left."""
        if not self._max_age_s:
            return False
        samples, horizon = self._samples, now - self._max_age_s
        dropped = False
        while len(samples) > 1 and samples[0][0] < horizon:
            self._drop_oldest()
            dropped = True
        return dropped

    def reset(self, now: float, value: float) -> None:
        """Forget everything but one new sample."""
        self._samples.clear()
        self.sorted.clear()
        self.add(now, value)

    def clear(self) -> None:
        """Forget every sample."""
        self._samples.clear()
        self.sorted.clear()

    @property
    def last_at(self) -> float:
        """When the newest sample was taken (-inf when empty)."""
        return self._samples[-1][0] if self._samples else -math.inf

    def quantile(self, q: float) -> float:
        """Nearest-rank percentile of the values (0.0 when empty)."""
        return percentile(self.sorted, q)


class NodeSamples:
    """One node's measures: latency (ms), time per output token (ms), and tokens per
    second (sum of tokens / sum of seconds over the reports that carried tokens)."""

    __slots__ = ("_max_age_s", "_rate", "_tok_lat_sum", "_tok_sum", "lat", "tpot")

    def __init__(self, size: int, max_age_s: float = 0.0) -> None:
        self.lat = SampleWindow(size, max_age_s)
        self.tpot = SampleWindow(size, max_age_s)
        self._rate: deque[tuple[float, float, int]] = deque(maxlen=max(1, size))
        self._max_age_s = max_age_s
        self._tok_sum = 0
        self._tok_lat_sum = 0.0

    def add_rate(self, now: float, latency_s: float, tokens: int) -> None:
        """``tokens`` produced in ``latency_s`` seconds, reported at ``now``."""
        if len(self._rate) == self._rate.maxlen:
            self._drop_rate()
        self._rate.append((now, latency_s, tokens))
        self._tok_lat_sum += latency_s
        self._tok_sum += tokens

    def _drop_rate(self) -> None:
        _, lat, tok = self._rate.popleft()
        self._tok_lat_sum -= lat
        self._tok_sum -= tok

    @property
    def tokens_per_s(self) -> float | None:
        """Measured tokens per second; None until a report carries tokens."""
        return self._tok_sum / self._tok_lat_sum if self._tok_lat_sum > 0 else None

    def expire(self, now: float) -> bool:
        """Age every measure out; True if any figure changed."""
        changed = self.lat.expire(now)
        changed = self.tpot.expire(now) or changed
        if self._max_age_s:
            rate, horizon = self._rate, now - self._max_age_s
            while len(rate) > 1 and rate[0][0] < horizon:
                self._drop_rate()
                changed = True
        return changed
