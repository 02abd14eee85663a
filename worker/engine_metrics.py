"""Reading an inference engine's Prometheus ``/metrics``: load, KV cache, TTFT and ITL.

``parse(text)`` turns one exposition (text format 0.0.4, parsed by
``prometheus_client.parser``) into a ``Reading``; ``Scraper`` fetches it in the
background every ``interval_s`` (never on a request's path) and keeps the latest one,
with the histograms differenced over a time-aged window so that the latencies are
*recent* percentiles, not the engine's lifetime ones.

Metric names, per engine (sources: vLLM's "Production Metrics" page and
``vllm/v1/metrics/loggers.py``; SGLang's ``sglang/srt/metrics/collector.py``;
llama.cpp's ``tools/server/README.md`` "GET /metrics", served with ``--metrics``):

- ``vllm``: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``; KV cache
  ``vllm:kv_cache_usage_perc`` (older: ``vllm:gpu_cache_usage_perc``; both 0..1);
  histograms ``vllm:time_to_first_token_seconds`` and ``vllm:inter_token_latency_seconds``
  (older: ``vllm:time_per_output_token_seconds``).
- ``sglang``: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``; KV cache
  ``sglang:token_usage`` (0..1); histograms ``sglang:time_to_first_token_seconds`` and
  ``sglang:inter_token_latency_seconds`` (older: ``sglang:time_per_output_token_seconds``).
- ``llamacpp``: ``llamacpp:requests_processing``, ``llamacpp:requests_deferred``; KV
  cache ``llamacpp:kv_cache_usage_ratio`` (older builds only); no latency histograms
  (the worker's own TTFT/ITL are reported instead).

Several series of one name (labels ``model_name``, ``engine`` for data-parallel
ranks...) are added up for the counts and the histograms; the KV cache is the fullest
series (the rank that fills first refuses first). ``llama_cpp.server`` (the Python
package) has no ``/metrics``: its worker reports its own counters (``worker.signals``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("fedgate.worker.engine")

Buckets = tuple[tuple[float, float], ...]
"""A cumulative histogram: (upper bound in seconds, observations <= bound), sorted by
bound, the last bound ``+Inf``."""

MAX_BYTES = 8 * 1024 * 1024
"""The largest exposition read (vLLM's is ~100 KB); beyond it the scrape fails."""
WINDOW_S = 60.0
"""How far back the latency percentiles look."""
MAX_BACKOFF_S = 30.0
"""Longest pause between two attempts while the endpoint keeps failing."""


@dataclass(frozen=True, slots=True)
class Names:
    """The metric names of one engine; of alternatives, the first one present is read."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache: tuple[str, ...] = ()
    ttft: tuple[str, ...] = ()
    itl: tuple[str, ...] = ()

    def all(self) -> tuple[str, ...]:
        """Every name, in no particular order."""
        return self.running + self.waiting + self.kv_cache + self.ttft + self.itl


ENGINES: dict[str, Names] = {
    "vllm": Names(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        ttft=("vllm:time_to_first_token_seconds",),
        itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    ),
    "sglang": Names(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_cache=("sglang:token_usage",),
        ttft=("sglang:time_to_first_token_seconds",),
        itl=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    ),
    "llamacpp": Names(
        running=("llamacpp:requests_processing",),
        waiting=("llamacpp:requests_deferred",),
        kv_cache=("llamacpp:kv_cache_usage_ratio",),
    ),
}
"""Engine (the heartbeat's ``engine.source``) -> its metric names."""

_WANTED = tuple(sorted({n for names in ENGINES.values() for n in names.all()}))


@dataclass(frozen=True, slots=True)
class Reading:
    """One exposition, as read: gauges now, histograms cumulative since engine start."""

    source: str
    """The engine: a key of ``ENGINES``."""
    running: int
    waiting: int
    kv_cache_usage: float | None = None
    """0..1, or None when the engine exports none."""
    ttft: Buckets | None = None
    itl: Buckets | None = None


def parse(text: str) -> Reading | None:
    """The engine's reading in an exposition, or None when it is no engine's we know.

    Raises ``ValueError`` on text that is not the Prometheus text format."""
    # Only the lines naming a metric we read go to the parser (an exposition holds
    # hundreds of others); HELP and TYPE lines name their metric too.
    kept = "\n".join(line for line in text.splitlines() if any(n in line for n in _WANTED))
    gauges: dict[str, list[float]] = {}
    histograms: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(kept + "\n"):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                counts = histograms.setdefault(family.name, {})
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
            elif sample.name == family.name:
                gauges.setdefault(family.name, []).append(sample.value)
    for source, names in ENGINES.items():
        running = _first(gauges, names.running)
        waiting = _first(gauges, names.waiting)
        if running is None and waiting is None:
            continue
        kv = _first(gauges, names.kv_cache)
        return Reading(
            source=source,
            running=_count(running),
            waiting=_count(waiting),
            kv_cache_usage=None if kv is None else _fraction(max(kv)),
            ttft=_buckets(histograms, names.ttft),
            itl=_buckets(histograms, names.itl),
        )
    return None


def _first(found: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    return next((found[n] for n in names if n in found), None)


def _count(values: list[float] | None) -> int:
    total = sum(v for v in values or () if math.isfinite(v))
    return max(0, round(total))


def _fraction(value: float) -> float | None:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else None


def _buckets(found: dict[str, dict[float, float]], names: tuple[str, ...]) -> Buckets | None:
    counts = next((found[n] for n in names if n in found), None)
    if not counts or math.inf not in counts:
        return None
    return tuple(sorted(counts.items()))


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


@dataclass(frozen=True, slots=True)
class EngineState:
    """The engine's signals as the heartbeat reports them."""

    source: str
    running: int
    waiting: int
    kv_cache_usage: float | None
    ttft_ms: tuple[float, float] | None
    """(p50, p90) of the recent window, or None."""
    itl_ms: tuple[float, float] | None
    measured_at: float
    """Epoch seconds of the scrape."""
    monotonic: float
    """``time.monotonic()`` of the scrape (for freshness)."""


class Scraper:
    """Reads ``url`` every ``interval_s`` on a background task (``start``/``stop``).

    ``state()`` is the latest reading while it is fresh (younger than three intervals
    plus a timeout), else None: the caller then reports the worker's own counters. A
    failing endpoint (refused, 404, timeout, not an engine's metrics) is logged once,
    then retried with a doubling pause (up to ``MAX_BACKOFF_S``); its recovery is
    logged once too.
    """

    def __init__(
        self,
        url: str,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 0.5,
        window_s: float = WINDOW_S,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._ttft = HistogramWindow(window_s)
        self._itl = HistogramWindow(window_s)
        self._state: EngineState | None = None
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Start scraping in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="engine-metrics")

    async def stop(self) -> None:
        """Stop scraping and close the HTTP session."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def state(self) -> EngineState | None:
        """The latest reading, or None when there is none recent enough."""
        state = self._state
        stale_after = 3 * self.interval_s + self.timeout_s
        if state is None or time.monotonic() - state.monotonic > stale_after:
            return None
        return state

    async def _loop(self) -> None:
        pause = self.interval_s
        while True:
            ok = await self.scrape_once()
            pause = self.interval_s if ok else min(MAX_BACKOFF_S, max(pause, self.interval_s) * 2)
            await asyncio.sleep(pause)

    async def scrape_once(self) -> bool:
        """Read the endpoint once; True if it gave an engine's reading."""
        try:
            text = await self._fetch()
            reading = await asyncio.to_thread(parse, text)
            if reading is None:
                raise ValueError("no vLLM, SGLang or llama.cpp metric in it")
        except Exception as exc:  # any failure (HTTP, timeout, parse) means "no reading"
            self._failed(exc)
            return False
        self.record(reading)
        if self._failing:
            self._failing = False
            log.info("engine metrics at %s readable again (%s)", self.url, reading.source)
        return True

    async def _fetch(self) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        async with self._session.get(self.url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise ValueError(f"more than {MAX_BYTES} bytes")
        return body.decode()

    def record(self, reading: Reading) -> None:
        """Keep ``reading`` as the latest state (its histograms join the windows)."""
        now = time.monotonic()
        if reading.ttft is not None:
            self._ttft.add(now, reading.ttft)
        if reading.itl is not None:
            self._itl.add(now, reading.itl)
        self._state = EngineState(
            source=reading.source,
            running=reading.running,
            waiting=reading.waiting,
            kv_cache_usage=reading.kv_cache_usage,
            ttft_ms=self._ttft.percentiles_ms() if reading.ttft is not None else None,
            itl_ms=self._itl.percentiles_ms() if reading.itl is not None else None,
            measured_at=time.time(),
            monotonic=now,
        )

    def _failed(self, exc: BaseException) -> None:
        why = str(exc) or type(exc).__name__
        if not self._failing:
            self._failing = True
            log.warning(
                "engine metrics at %s unreadable (%s): reporting the worker's own counters",
                self.url,
                why,
            )
        else:
            log.debug("engine metrics at %s still unreadable: %s", self.url, why)


def metrics_url(configured: str | None, default: str | None) -> str | None:
    """The URL to scrape: the configured one, else ``default`` (the openai backend's
    upstream + ``/metrics``); ``off`` or an empty string means none."""
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "none") else configured
    return default
