"""Tool-call deltas and log-probabilities put back together (pure)."""

from __future__ import annotations

from worker.backends.assemble import Output, ToolCalls, merge_logprobs
from worker.backends.base import Piece


def test_parallel_calls_interleaved() -> None:
    calls = ToolCalls()
    calls.add(
        [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]
    )
    calls.add([{"index": 1, "id": "b", "type": "function", "function": {"name": "g"}}])
    calls.add(
        [
            {"index": 0, "function": {"arguments": '{"x":'}},
            {"index": 1, "function": {"arguments": "{}"}},
        ]
    )
    calls.add([{"index": 0, "function": {"arguments": " 1}"}}])
    assert calls.calls() == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert [d["index"] for d in calls.deltas()] == [0, 1]


def test_logprobs_lists_concatenate() -> None:
    a = {"content": [{"token": "a"}], "refusal": None}
    b = {"content": [{"token": "b"}]}
    assert merge_logprobs(a, b) == {"content": [{"token": "a"}, {"token": "b"}], "refusal": None}
    assert merge_logprobs(None, b) == b


def test_output_totals_prefer_the_engine() -> None:
    out = Output(resume_tokens=2)
    out.add(Piece(text="a ", tokens=1))
    out.add(Piece(text="b ", tokens=1))
    assert out.total() == 4
    out.add(Piece(text="", tokens=0, finish_reason="tool_calls", completion_tokens=5))
    assert out.total() == 7  # the engine counted 5 after the 2 resumed
    assert out.finish_reason() == "stop"  # no call was made
    assert out.take() == ("a b ", 2, None, None)
    assert not out.pending
