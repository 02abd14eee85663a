"""The openai backend's SSE parser and JSON reading (pure: no upstream)."""

from __future__ import annotations

import pytest

from worker.backends.openai_wire import SSEParser, json_of


def events(*chunks: bytes) -> list[bytes]:
    parser = SSEParser()
    return [data for chunk in chunks for data in parser.feed(chunk)]


BODIES = {
    "lf": b'data: {"a":1}\n\ndata: [DONE]\n\n',
    "crlf": b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n',
    "cr": b'data: {"a":1}\r\rdata: [DONE]\r\r',
    "no space": b'data:{"a":1}\n\ndata:[DONE]\n\n',
    "multi-line": b'data: {"a":\ndata: 1}\n\ndata: [DONE]\n\n',
    "fields and comments": b": ping\n\nevent: message\nid: 7\nretry: 10\n\n"
    b'id: 8\ndata: {"a":1}\n: x\n\ndata: [DONE]\n\n',
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_split_of_every_framing_gives_the_same_events(name: str) -> None:
    body = BODIES[name]
    want = [b'{"a":\n1}' if name == "multi-line" else b'{"a":1}', b"[DONE]"]
    assert events(body) == want
    for i in range(len(body) + 1):
        assert events(body[:i], body[i:]) == want, i
    assert events(*(body[i : i + 1] for i in range(len(body)))) == want


def test_a_cr_ending_a_chunk_dispatches_at_once() -> None:
    """The event a CR completes is not held back waiting for a possible LF."""
    parser = SSEParser()
    assert parser.feed(b"data: x\r\r") == [b"x"]
    assert parser.feed(b"\ndata: y\r\n\r\n") == [b"y"]  # that LF ends an empty line: nothing


def test_events_without_data_and_unfinished_events_dispatch_nothing() -> None:
    assert events(b"data:\n\nevent: e\n\ndata\n\n") == []
    assert events(b"data: \ndata:\n\n") == [b"\n"]  # two empty data lines: one LF
    assert events(b'data: {"a":1}\n') == []  # the body ended inside the event


def test_json_of_reads_what_the_stdlib_reads() -> None:
    assert json_of(b'{"choices":[{"text":"hi"}]}') == {"choices": [{"text": "hi"}]}
    assert json_of(b"[-Infinity]") == [float("-inf")]
    with pytest.raises(ValueError):
        json_of(b"{not json")
