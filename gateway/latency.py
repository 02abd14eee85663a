"""Windows of timed samples: bounded in count and in age, with exact percentiles.

Samples leave when a window is full (the oldest first) or when they are older than
``max_age_s``, except the newest one, which stays however old it is: a node measured once
keeps its last known figure instead of looking as if it had never been measured.
``NodeSamples`` holds one node's three measures (latency, time per token, tokens/s).

Samples live in ``array('d')`` buffers (8 bytes each, no float objects): with 10,000
nodes and full windows that is a few KB per node, not tens.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending sequence; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class SampleWindow:
    """The last ``size`` samples no older than ``max_age_s`` (0: no age limit)."""

    __slots__ = ("_max_age_s", "_size", "_times", "_values", "sorted")

    def __init__(self, size: int, max_age_s: float = 0.0) -> None:
        self._size = max(1, size)
        self._max_age_s = max_age_s
        self._times = array("d")
        self._values = array("d")
        self.sorted = array("d")
        """The values, ascending (read-only for callers)."""

    def __len__(self) -> int:
        return len(self._values)

    def add(self, now: float, value: float) -> None:
        """Append a sample taken at ``now``."""
        if len(self._values) >= self._size:
            self._drop_oldest()
        self._times.append(now)
        self._values.append(value)
        bisect.insort(self.sorted, value)

    def _drop_oldest(self) -> None:
        del self._times[0]
        old = self._values.pop(0)
        del self.sorted[bisect.bisect_left(self.sorted, old)]

    def expire(self, now: float) -> bool:
        """Drop samples older than the age limit (never the newest); True if any left."""
        if not self._max_age_s:
            return False
        times, horizon = self._times, now - self._max_age_s
        dropped = False
        while len(times) > 1 and times[0] < horizon:
            self._drop_oldest()
            dropped = True
        return dropped

    def reset(self, now: float, value: float) -> None:
        """Forget everything but one new sample."""
        self.clear()
        self.add(now, value)

    def clear(self) -> None:
        """Forget every sample."""
        del self._times[:], self._values[:], self.sorted[:]

    @property
    def last_at(self) -> float:
        """When the newest sample was taken (-inf when empty)."""
        return self._times[-1] if self._times else -math.inf

    def quantile(self, q: float) -> float:
        """Nearest-rank percentile of the values (0.0 when empty)."""
        return percentile(self.sorted, q)


class RateWindow:
    """Tokens per second over the last ``size`` reports that carried tokens, no older than
    ``max_age_s`` (except the newest): sum of tokens / sum of their seconds."""

    __slots__ = ("_max_age_s", "_s_sum", "_seconds", "_size", "_times", "_tokens", "_tokens_sum")

    def __init__(self, size: int, max_age_s: float = 0.0) -> None:
        self._size = max(1, size)
        self._max_age_s = max_age_s
        self._times = array("d")
        self._seconds = array("d")
        self._tokens = array("d")
        self._tokens_sum = 0.0
        self._s_sum = 0.0

    def add(self, now: float, seconds: float, tokens: int) -> None:
        """``tokens`` produced in ``seconds``, reported at ``now``."""
        if len(self._times) >= self._size:
            self._drop_oldest()
        self._times.append(now)
        self._seconds.append(seconds)
        self._tokens.append(tokens)
        self._s_sum += seconds
        self._tokens_sum += tokens

    def _drop_oldest(self) -> None:
        del self._times[0]
        self._s_sum -= self._seconds.pop(0)
        self._tokens_sum -= self._tokens.pop(0)

    def expire(self, now: float) -> bool:
        """Drop reports older than the age limit (never the newest); True if any left."""
        if not self._max_age_s:
            return False
        times, horizon = self._times, now - self._max_age_s
        dropped = False
        while len(times) > 1 and times[0] < horizon:
            self._drop_oldest()
            dropped = True
        return dropped

    @property
    def per_s(self) -> float | None:
        """Tokens per second; None until a report carries tokens."""
        return self._tokens_sum / self._s_sum if self._s_sum > 0 else None


class NodeSamples:
    """One node's measures: latency (ms), time per output token (ms), tokens per second."""

    __slots__ = ("lat", "rate", "tpot")

    def __init__(self, size: int, max_age_s: float = 0.0) -> None:
        self.lat = SampleWindow(size, max_age_s)
        self.tpot = SampleWindow(size, max_age_s)
        self.rate = RateWindow(size, max_age_s)

    def expire(self, now: float) -> bool:
        """Age every measure out; True if any figure changed."""
        changed = self.lat.expire(now)
        changed = self.tpot.expire(now) or changed
        return self.rate.expire(now) or changed
