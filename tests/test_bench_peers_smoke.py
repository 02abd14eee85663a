"""The peers benchmark (``bench/peers``) still runs, at tiny sizes; figures are not asserted.

In ``make test``: the fake upstream, and fedgate against ``direct`` with the in-repo
client (no peer venv needed). The part that needs the peers' venvs (sglang-router and
aiperf from ``make peers-setup``) runs only with ``FEDGATE_PEERS_SMOKE=1`` and skips
otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers.procs import Procs, http_json
from bench.peers.upstream import WORDS

UPSTREAM = [sys.executable, "-m", "bench.peers.upstream", "--port", "0"]
TOKENIZER = Path(__file__).resolve().parents[1] / "bench" / "peers" / "tokenizer"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    """One fake upstream process (5 ms to the first word, 1 ms between words)."""
    with Procs(tmp_path) as owner:
        proc = owner.spawn("up", [*UPSTREAM, "--ttft-ms", "5", "--itl-ms", "1"], stdout_pipe=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        yield f"http://127.0.0.1:{line.split()[1]}"


def _stream(url: str, max_tokens: int) -> list[str]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }
    out = subprocess.run(
        ["curl", "-sN", "--max-time", "10", f"{url}/v1/chat/completions", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    return [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]


def test_upstream_streams_one_word_per_chunk_with_usage(upstream: str) -> None:
    events = _stream(upstream, 5)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    words = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [w for w in words if w] == [f" {w}" for w in WORDS[:5]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert http_json(f"{upstream}/v1/models")["data"][0]["id"] == "bench"
    assert http_json(f"{upstream}/stats")["requests"] == 1


def test_upstream_faults_answer_500_and_cut_streams(upstream: str) -> None:
    http_json(f"{upstream}/admin/faults", {"cut_rate": 1.0, "cut_after": 2})
    events = _stream(upstream, 6)
    assert len(events) == 2 and "[DONE]" not in events  # two words, then the cut
    http_json(f"{upstream}/admin/faults", {"fail_rate": 1.0})
    with pytest.raises(OSError, match="500"):
        http_json(f"{upstream}/v1/chat/completions", {"model": "bench", "messages": []})
    http_json(f"{upstream}/admin/faults", {})
    assert len(_stream(upstream, 3)) == 6  # 3 words, the finish, the usage, [DONE]
    stats = http_json(f"{upstream}/stats")
    assert (stats["cut"], stats["failed"], stats["completed"]) == (1, 1, 1)


def test_tokenizer_is_word_level_and_knows_the_upstream_words() -> None:
    spec = json.loads((TOKENIZER / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "WordLevel"
    vocab = spec["model"]["vocab"]
    assert "[UNK]" in vocab and all(w in vocab for w in WORDS)


def _run(args: list[str], tmp_path: Path, timeout: float) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--out", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


TINY = ["--rounds", "1", "--requests", "12", "--concurrency", "3", "--isl", "4", "--osl", "6"]
TINY += ["--ttft-ms", "5", "--itl-ms", "2", "--fault-requests", "12"]


@pytest.mark.slow
def test_fedgate_against_direct_with_faults_at_tiny_sizes(tmp_path: Path) -> None:
    figures = _run(["--routers", "direct,fedgate", "--loadgen", "client", *TINY], tmp_path, 110)
    summary = figures["summary"]
    assert isinstance(summary, dict)
    assert summary["fedgate"]["ok"] == 12 and summary["direct"]["ok"] == 12
    assert summary["fedgate"]["cpu_ms_per_req_by_part"].keys() == {"gateway", "workers", "nats"}
    assert summary["direct"]["share_pct"] == [33.3, 33.3, 33.3]
    faults = figures["faults"]
    assert isinstance(faults, dict) and set(faults) == {"kill", "errors", "cut"}
    for per_router in faults.values():
        for f in per_router.values():
            assert f["ok"] + f["errors"] + f["truncated"] == 12
    assert faults["errors"]["direct"]["errors"] == 4  # round-robin: every third hits the 500s
    assert faults["cut"]["direct"]["truncated"] == 4


def _have_peers() -> bool:
    from bench.peers import loadgen, routers

    return routers.have_peer("sglang") and loadgen.aiperf_binary().exists()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FEDGATE_PEERS_SMOKE") != "1" or not _have_peers(),
    reason="needs FEDGATE_PEERS_SMOKE=1 and the peer venvs (make peers-setup)",
)
def test_sglang_through_aiperf_at_tiny_sizes(tmp_path: Path) -> None:
    args = ["--routers", "direct,sglang:round_robin", "--no-faults", *TINY]
    figures = _run(args, tmp_path, 115)
    summary = figures["summary"]
    assert isinstance(summary, dict)
    assert summary["sglang:round_robin"]["errors"] == 0
    assert summary["sglang:round_robin"]["ok"] == 12
