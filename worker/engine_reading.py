"""What an inference engine's Prometheus exposition says: load, KV cache, latencies.

``parse(text)`` turns one exposition (text format 0.0.4, parsed by
``prometheus_client.parser``) into a ``Reading``: gauges as they are now, histograms
(``worker.histograms.Buckets``, seconds) cumulative since the engine started.

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

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from worker.histograms import Buckets


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
