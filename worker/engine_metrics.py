"""Reading an inference engine's Prometheus ``/metrics``: load, KV cache, TTFT and ITL.

``Scraper`` fetches the exposition in the background every ``interval_s`` (never on a
request's path), parses it (``worker.engine_reading.parse``, where the metric names of
each engine are listed) and keeps the latest ``EngineState``, with the histograms
differenced over a time-aged window (``worker.histograms.HistogramWindow``) so that
the latencies are *recent* percentiles, not the engine's lifetime ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from worker.engine_reading import ENGINES, Names, Reading, parse
from worker.histograms import WINDOW_S, Buckets, HistogramWindow, quantile

__all__ = [
    "ENGINES",
    "MAX_BACKOFF_S",
    "MAX_BYTES",
    "WINDOW_S",
    "Buckets",
    "EngineState",
    "HistogramWindow",
    "Names",
    "Reading",
    "Scraper",
    "metrics_url",
    "parse",
    "quantile",
]

log = logging.getLogger("fedgate.worker.engine")

MAX_BYTES = 8 * 1024 * 1024
"""The largest exposition read (vLLM's is ~100 KB); beyond it the scrape fails."""
MAX_BACKOFF_S = 30.0
"""Longest pause between two attempts while the endpoint keeps failing."""


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
