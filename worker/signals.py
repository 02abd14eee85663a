"""The heartbeat's ``engine`` signals: from the engine's /metrics, else the worker's own.

The node times every job's output here (``Signals.clock``): the time to its first
piece (TTFT) and between two pieces (ITL, per token of the later piece), kept in
bounded, time-aged windows whose p50/p90 are the worker's own latency figures. A
heartbeat's ``engine`` (``Signals.report``) takes, in order of preference:

- running, waiting, KV cache: the engine's latest fresh scrape (``worker.engine_metrics``),
  else the backend's ``engine_load()`` hook (the in-process llama backend's queue), else
  the node's jobs in flight (running) and 0 (waiting: the node queues nothing);
- TTFT and ITL: the engine's histograms when it exports them (vLLM, SGLang), else the
  worker's windows (llama.cpp's server and every other backend).
"""

from __future__ import annotations

import math
import time
from collections import deque

from shared import messages as m
from worker.backends.load import Load
from worker.engine_metrics import WINDOW_S, Scraper

MAX_SAMPLES = 1024
"""Most samples a window keeps (the oldest go first)."""


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolated between neighbours."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class LatencyWindow:
    """Latencies (milliseconds) of the last ``window_s`` seconds, at most ``max_samples``."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, ms: float, now: float | None = None) -> None:
        """Record one latency measured at ``now`` (monotonic seconds)."""
        self._samples.append((time.monotonic() if now is None else now, ms))

    def percentiles(self, now: float | None = None) -> tuple[float, float] | None:
        """(p50, p90) in milliseconds of the samples still in the window, or None."""
        horizon = (time.monotonic() if now is None else now) - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(ms for _, ms in self._samples)
        return round(percentile(ordered, 0.5), 3), round(percentile(ordered, 0.9), 3)


class StreamClock:
    """Times one job's output: its first piece gives a TTFT, each later one an ITL."""

    __slots__ = ("_last", "_signals", "_started")

    def __init__(self, signals: Signals, started: float) -> None:
        self._signals = signals
        self._started = started
        self._last: float | None = None

    def output(self, tokens: int, now: float | None = None) -> None:
        """A piece of ``tokens`` tokens arrived at ``now`` (``time.perf_counter()``)."""
        now = time.perf_counter() if now is None else now
        if self._last is None:
            self._signals.ttft.add((now - self._started) * 1000)
        else:
            self._signals.itl.add((now - self._last) * 1000 / max(1, tokens))
        self._last = now


class Signals:
    """The node's engine signals: its latency windows and, optionally, a scraper."""

    def __init__(self, scraper: Scraper | None = None, window_s: float = WINDOW_S) -> None:
        self.scraper = scraper
        self.ttft = LatencyWindow(window_s)
        self.itl = LatencyWindow(window_s)

    def clock(self, started: float) -> StreamClock:
        """A clock for one job started at ``started`` (``time.perf_counter()``)."""
        return StreamClock(self, started)

    def report(self, in_flight: int, load: Load | None = None) -> m.EngineSignals:
        """The heartbeat's ``engine``: ``in_flight`` is the node's job count, ``load``
        what its backend's ``engine_load()`` hook said (None: no hook)."""
        scraped = self.scraper.state() if self.scraper is not None else None
        ttft = scraped.ttft_ms if scraped is not None else None
        itl = scraped.itl_ms if scraped is not None else None
        ttft = ttft or self.ttft.percentiles()
        itl = itl or self.itl.percentiles()
        if scraped is not None:
            source, measured_at = scraped.source, scraped.measured_at
            load = Load(scraped.running, scraped.waiting, scraped.kv_cache_usage)
        else:
            source, measured_at = "worker", time.time()
            load = load or Load(in_flight, 0)
        kv = load.kv_cache_usage
        return m.EngineSignals(
            source=source,
            running=max(0, load.running),
            waiting=max(0, load.waiting),
            kv_cache_usage=None if kv is None else min(1.0, max(0.0, kv)),
            ttft_p50_ms=_ms(ttft, 0),
            ttft_p90_ms=_ms(ttft, 1),
            itl_p50_ms=_ms(itl, 0),
            itl_p90_ms=_ms(itl, 1),
            measured_at=int(measured_at * 1000),
        )


def _ms(pair: tuple[float, float] | None, i: int) -> float | None:
    if pair is None or not math.isfinite(pair[i]):
        return None
    return max(0.0, pair[i])
