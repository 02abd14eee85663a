"""The benchmarks still run (figures are not asserted: they belong to `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_hot_path_benchmark_runs_and_prints_one_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_overhead", "--hot-path-only", "--quick"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"gateway_us_per_req", "relay_us_per_req", "tracing_on_minus_off_us"} <= set(figures)
