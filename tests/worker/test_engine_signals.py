"""Engine signals, the pure parts: parsing each engine's /metrics, the recent windows,
what the heartbeat reports, and the wire (old and new heartbeats both ways)."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from shared import messages as m
from worker.backends.load import Load, QueueCounter
from worker.engine_metrics import HistogramWindow, Scraper, metrics_url, parse, quantile
from worker.signals import LatencyWindow, Signals

# What vLLM (v1 engine) serves: HELP/TYPE lines, an ``engine`` and a ``model_name``
# label on every series, counters and histograms we do not read among them.
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Llama-3.1-8B"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Llama-3.1-8B"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Llama-3.1-8B"} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Llama-3.1-8B"} 12345.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="Llama-3.1-8B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.2",model_name="Llama-3.1-8B"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.4",model_name="Llama-3.1-8B"} 20.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Llama-3.1-8B"} 20.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Llama-3.1-8B"} 20.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Llama-3.1-8B"} 5.1
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="Llama-3.1-8B"} 50.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.02",model_name="Llama-3.1-8B"} 100.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="Llama-3.1-8B"} 100.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="Llama-3.1-8B"} 100.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="Llama-3.1-8B"} 1.2
"""

# An older vLLM: gpu_cache_usage_perc and time_per_output_token_seconds, two models.
VLLM_OLD = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 1.0
vllm:num_requests_running{model_name="b"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 0.0
vllm:num_requests_waiting{model_name="b"} 7.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
vllm:gpu_cache_usage_perc{model_name="b"} 0.75
# HELP vllm:time_per_output_token_seconds Histogram of time per output token in seconds.
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="a"} 10.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="a"} 10.0
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="b"} 0.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="b"} 10.0
vllm:time_per_output_token_seconds_count{model_name="a"} 10.0
vllm:time_per_output_token_seconds_sum{model_name="a"} 0.3
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B",tp_rank="0"} 5.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen2.5-7B",tp_rank="0"} 1.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen2.5-7B",tp_rank="0"} 0.9
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="Qwen/Qwen2.5-7B",tp_rank="0"} 812.5
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="Qwen/Qwen2.5-7B"} 0.0
sglang:time_to_first_token_seconds_bucket{le="1.0",model_name="Qwen/Qwen2.5-7B"} 4.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="Qwen/Qwen2.5-7B"} 4.0
sglang:time_to_first_token_seconds_count{model_name="Qwen/Qwen2.5-7B"} 4.0
sglang:time_to_first_token_seconds_sum{model_name="Qwen/Qwen2.5-7B"} 3.0
# HELP sglang:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE sglang:inter_token_latency_seconds histogram
sglang:inter_token_latency_seconds_bucket{le="0.002",model_name="Qwen/Qwen2.5-7B"} 0.0
sglang:inter_token_latency_seconds_bucket{le="0.004",model_name="Qwen/Qwen2.5-7B"} 10.0
sglang:inter_token_latency_seconds_bucket{le="+Inf",model_name="Qwen/Qwen2.5-7B"} 10.0
sglang:inter_token_latency_seconds_count{model_name="Qwen/Qwen2.5-7B"} 10.0
sglang:inter_token_latency_seconds_sum{model_name="Qwen/Qwen2.5-7B"} 0.03
"""

# llama.cpp's llama-server --metrics: no labels, no histograms.
LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3469
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 6
"""


def test_vllm_exposition() -> None:
    r = parse(VLLM)
    assert r is not None
    assert (r.source, r.running, r.waiting, r.kv_cache_usage) == ("vllm", 3, 2, 0.42)
    assert r.ttft == ((0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0))
    assert r.itl is not None and r.itl[-1] == (float("inf"), 100.0)


def test_older_vllm_names_and_several_models_add_up() -> None:
    r = parse(VLLM_OLD)
    assert r is not None
    # counts add up across models; the KV cache is the fullest series
    assert (r.source, r.running, r.waiting, r.kv_cache_usage) == ("vllm", 5, 7, 0.75)
    assert r.ttft is None  # this exposition has no TTFT histogram
    assert r.itl == ((0.05, 10.0), (float("inf"), 20.0))  # time_per_output_token, summed


def test_sglang_exposition() -> None:
    r = parse(SGLANG)
    assert r is not None
    assert (r.source, r.running, r.waiting, r.kv_cache_usage) == ("sglang", 5, 1, 0.9)
    assert r.ttft is not None and quantile(0.5, r.ttft) == pytest.approx(0.75)
    assert r.itl is not None and quantile(0.5, r.itl) == pytest.approx(0.003)


def test_llamacpp_exposition() -> None:
    r = parse(LLAMACPP)
    assert r is not None
    assert (r.source, r.running, r.waiting, r.kv_cache_usage) == ("llamacpp", 2, 6, 0.125)
    assert (r.ttft, r.itl) == (None, None)


def test_llamacpp_without_kv_gauge_reports_none() -> None:
    text = "\n".join(x for x in LLAMACPP.splitlines() if "kv_cache" not in x) + "\n"
    r = parse(text)
    assert r is not None and r.kv_cache_usage is None and r.running == 2


def test_other_metrics_are_no_engines_and_garbage_is_an_error() -> None:
    assert parse("# TYPE http_requests_total counter\nhttp_requests_total 3\n") is None
    with pytest.raises(ValueError):
        parse("vllm:num_requests_running{model_name=} not-a-number\n")


def test_quantile_interpolates_inside_buckets() -> None:
    buckets = ((0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0))
    assert quantile(0.5, buckets) == pytest.approx(0.2)
    assert quantile(0.9, buckets) == pytest.approx(0.36)  # 0.2 + 0.2 * (18 - 10) / 10
    # observations beyond the last finite bound: that bound
    assert quantile(0.9, ((0.5, 1.0), (float("inf"), 10.0))) == 0.5
    assert quantile(0.5, ((0.5, 0.0), (float("inf"), 0.0))) is None


def test_histogram_window_forgets_what_is_older_than_the_window() -> None:
    inf = float("inf")
    window = HistogramWindow(window_s=60)
    slow = ((0.1, 0.0), (1.0, 0.0), (2.0, 100.0), (inf, 100.0))  # lifetime: 100 slow ones
    window.add(0.0, slow)
    assert window.percentiles_ms() == (1500.0, 1900.0)  # one reading: the whole history
    fast = ((0.1, 10.0), (1.0, 10.0), (2.0, 110.0), (inf, 110.0))  # then 10 fast ones
    window.add(30.0, fast)
    assert window.percentiles_ms() == (50.0, 90.0)  # only the 10 since the first reading
    window.add(100.0, fast)
    window.add(130.0, fast)  # nothing new for more than a window
    assert window.percentiles_ms() is None


def test_histogram_window_restarts_with_the_engine() -> None:
    inf = float("inf")
    window = HistogramWindow(window_s=60)
    window.add(0.0, ((1.0, 50.0), (inf, 50.0)))
    window.add(1.0, ((1.0, 50.0), (inf, 60.0)))
    assert window.percentiles_ms() == (1000.0, 1000.0)  # the 10 new ones are beyond 1 s
    window.add(2.0, ((1.0, 4.0), (inf, 4.0)))  # counts went down: a restarted engine
    assert window.percentiles_ms() == (500.0, 900.0)


def test_latency_window_ages_and_bounds_its_samples() -> None:
    window = LatencyWindow(window_s=10, max_samples=100)
    for _ in range(5):
        window.add(1000.0, now=0.0)  # old and slow
    for i in range(1, 11):
        window.add(float(i), now=5.0)
    assert window.percentiles(now=5.0) == (8.0, 1000.0)
    assert window.percentiles(now=12.0) == (5.5, 9.1)  # the old ones aged out
    assert window.percentiles(now=20.0) is None
    bounded = LatencyWindow(window_s=10, max_samples=3)
    for v in (100.0, 1.0, 2.0, 3.0):
        bounded.add(v, now=0.0)
    assert bounded.percentiles(now=0.0) == (2.0, 2.8)  # 100 was pushed out


def test_stream_clock_measures_ttft_and_itl_per_token() -> None:
    signals = Signals()
    clock = signals.clock(started=10.0)
    clock.output(1, now=10.25)  # first piece: TTFT 250 ms
    clock.output(1, now=10.27)  # 20 ms later
    clock.output(2, now=10.33)  # two tokens 60 ms later: 30 ms each
    assert signals.ttft.percentiles() == (250.0, 250.0)
    p50, p90 = signals.itl.percentiles() or (0.0, 0.0)
    assert (p50, p90) == (pytest.approx(25.0), pytest.approx(29.0))


def test_report_falls_back_to_the_workers_own_counters() -> None:
    signals = Signals(Scraper("http://127.0.0.1:9/metrics"))  # never scraped: no state
    report = signals.report(in_flight=3)
    assert (report.source, report.running, report.waiting) == ("worker", 3, 0)
    assert report.kv_cache_usage is None and report.ttft_p50_ms is None
    assert report.measured_at > 0
    # a backend with its own queue (the llama backend) says more than the job count
    report = signals.report(in_flight=3, load=Load(running=1, waiting=2, kv_cache_usage=1.7))
    assert (report.running, report.waiting, report.kv_cache_usage) == (1, 2, 1.0)  # clamped


def test_report_prefers_the_engine_and_fills_latencies_it_lacks() -> None:
    scraper = Scraper("http://engine/metrics")
    signals = Signals(scraper)
    signals.clock(started=0.0).output(1, now=0.05)  # the worker measured a 50 ms TTFT
    reading = parse(LLAMACPP)
    assert reading is not None
    scraper.record(reading)
    report = signals.report(in_flight=9)
    assert (report.source, report.running, report.waiting) == ("llamacpp", 2, 6)
    assert report.kv_cache_usage == 0.125
    assert (report.ttft_p50_ms, report.itl_p50_ms) == (50.0, None)  # llama.cpp has none
    reading = parse(VLLM)
    assert reading is not None
    scraper.record(reading)
    report = signals.report(in_flight=9)
    assert (report.source, report.ttft_p50_ms, report.ttft_p90_ms) == ("vllm", 200.0, 360.0)
    assert report.itl_p50_ms == pytest.approx(10.0)


def test_queue_counter_balances() -> None:
    q = QueueCounter()
    q.queued()
    q.queued()
    q.started()
    assert q.counts() == (1, 1)
    q.dropped()
    q.finished()
    assert q.counts() == (0, 0)


def test_metrics_url_default_and_off() -> None:
    default = "http://127.0.0.1:8000/metrics"
    assert metrics_url(None, default) == default
    assert metrics_url(None, None) is None
    assert metrics_url("http://other:9/metrics", default) == "http://other:9/metrics"
    assert metrics_url("off", default) is None
    assert metrics_url("", default) is None


# -- the wire ----------------------------------------------------------------------


class OldHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """The heartbeat as a gateway built before engine signals decodes it."""

    node_id: str | None = None
    incarnation: str
    region: str = "default"
    capacity: Annotated[int, Meta(ge=1)] = 1
    in_flight: Annotated[int, Meta(ge=0)] = 0
    queue_depth: int = 0
    ttft_ms: float | None = None
    started_ms: int = 0


def test_an_old_heartbeat_decodes_without_engine() -> None:
    old = b'{"node_id":"n1","incarnation":"abc","capacity":4,"in_flight":1,"interval_ms":500}'
    hb = m.heartbeat_decoder.decode(old)
    assert hb.engine is None and hb.in_flight == 1


def test_a_new_heartbeat_decodes_both_ways() -> None:
    engine = Signals().report(in_flight=2, load=Load(running=2, waiting=5, kv_cache_usage=0.3))
    data = m.encode(m.Heartbeat(node_id="n1", incarnation="abc", capacity=4, engine=engine))
    new = m.heartbeat_decoder.decode(data)
    assert new.engine == engine and new.engine.waiting == 5
    old = msgspec.json.decode(data, type=OldHeartbeat)  # unknown fields are ignored
    assert (old.node_id, old.capacity) == ("n1", 4)
    assert msgspec.json.decode(data)["engine"]["source"] == "worker"


def test_a_partial_engine_object_takes_defaults_and_bad_values_are_refused() -> None:
    hb = m.heartbeat_decoder.decode(b'{"incarnation":"x","engine":{"running":2}}')
    assert hb.engine == m.EngineSignals(running=2)
    assert hb.engine.source == "worker" and hb.engine.kv_cache_usage is None
    with pytest.raises(msgspec.ValidationError):
        m.heartbeat_decoder.decode(b'{"incarnation":"x","engine":{"kv_cache_usage":1.5}}')
    # a source this gateway has never heard of is fine (a plain string)
    hb = m.heartbeat_decoder.decode(b'{"incarnation":"x","engine":{"source":"tgi"}}')
    assert hb.engine is not None and hb.engine.source == "tgi"
