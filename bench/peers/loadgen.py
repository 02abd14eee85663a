"""aiperf, the load generator of the main comparison, run from its own venv.

One call = one ``aiperf profile`` process: streamed chat completions with fixed input
and output lengths (``--isl``/``--osl`` in words: the tokenizer shipped in
``bench/peers/tokenizer`` is word-level), ``concurrency`` streams, ``requests`` requests,
spread round-robin over the given URLs. Its ``profile_export_aiperf.json`` is read back.

Notes from running it here (``/work/shared/PEERS-NOTES.md``): its ``builtin`` tokenizer
downloads a BPE file (fails offline), so a local tokenizer directory is given; with
``HF_HUB_OFFLINE=1`` aiperf 0.13.0 rejects that local path, so the variable is removed
from its environment; it takes ~10-15 s to start and about one core while it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.peers.routers import PEERS_DIR

TOKENIZER = Path(__file__).resolve().parent / "tokenizer"


@dataclass(frozen=True, slots=True)
class Load:
    """What aiperf sends."""

    concurrency: int = 32
    requests: int = 320
    isl: int = 64
    """Prompt words."""
    osl: int = 64
    """Answer words (``max_tokens``)."""
    seed: int = 1


def aiperf_binary() -> Path:
    """The ``aiperf`` script of the venv ``make peers-setup`` built."""
    return PEERS_DIR / "aiperf" / "bin" / "aiperf"


def command(urls: list[str], load: Load, api_key: str, model: str, out_dir: Path) -> list[str]:
    """The ``aiperf profile`` command line."""
    cmd = [str(aiperf_binary()), "profile", "--model", model]
    for url in urls:
        cmd += ["--url", url]
    cmd += [
        "--endpoint-type", "chat", "--streaming",
        "--tokenizer", str(TOKENIZER),
        "--isl", str(load.isl), "--isl-stddev", "0",
        "--osl", str(load.osl), "--use-legacy-max-tokens",
        "--concurrency", str(load.concurrency),
        "--request-count", str(load.requests),
        "--ui", "none", "--api-key", api_key,
        "--random-seed", str(load.seed),
        "--output-artifact-dir", str(out_dir),
    ]  # fmt: skip
    return cmd


def run(
    urls: list[str], load: Load, api_key: str, model: str, out_dir: Path, timeout_s: float = 900
) -> dict[str, Any]:
    """Run aiperf once; the figures of its JSON export (ms, req/s) and its time window."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["PYTHONWARNINGS"] = "ignore"
    with open(out_dir / "aiperf.stdout", "wb") as log:
        proc = subprocess.run(
            command(urls, load, api_key, model, out_dir),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, timeout=timeout_s, check=False,
        )  # fmt: skip
    export = out_dir / "profile_export_aiperf.json"
    if proc.returncode != 0 or not export.exists():
        raise RuntimeError(f"aiperf exited with {proc.returncode}: see {out_dir}/aiperf.stdout")
    return parse(json.loads(export.read_text()), load.requests)


def _stat(data: dict[str, Any], key: str, field: str) -> float | None:
    value = (data.get(key) or {}).get(field)
    return None if value is None else round(float(value), 3)


def parse(data: dict[str, Any], requested: int) -> dict[str, Any]:
    """The figures the comparison uses, from aiperf's ``profile_export_aiperf.json``.

    ``itl`` is aiperf's inter-token latency (per request: decode time / (tokens - 1));
    ``chunk_gap`` its inter-chunk latency (every gap between two chunks), which shows
    bursts (chunks held back then sent together) that the per-request mean hides.
    """
    errors = sum(int(e.get("count", 0)) for e in data.get("error_summary") or ())
    ok = int((data.get("request_count") or {}).get("avg", 0))
    figures: dict[str, Any] = {
        "ok": ok,
        "errors": errors or max(0, requested - ok),
        "rps": _stat(data, "request_throughput", "avg"),
        "tokens_per_s": _stat(data, "output_token_throughput", "avg"),
        "osl_mean": _stat(data, "output_sequence_length", "avg"),
        "duration_s": _stat(data, "benchmark_duration", "avg"),
    }
    for name, key in (
        ("ttft", "time_to_first_token"),
        ("itl", "inter_token_latency"),
        ("latency", "request_latency"),
        ("chunk_gap", "inter_chunk_latency"),
    ):
        for q in ("p50", "p99"):
            figures[f"{name}_{q}_ms"] = _stat(data, key, q)
    figures["window"] = [_epoch(data.get("start_time")), _epoch(data.get("end_time"))]
    return figures


def _epoch(stamp: Any) -> float | None:
    """aiperf's ISO local time stamps as Unix time."""
    if not isinstance(stamp, str):
        return None
    return datetime.fromisoformat(stamp).timestamp()
