"""Direct replies (docs/protocol.md, "Direct replies"): a node answers the caller itself.

The gateway's connection is wrapped to count what it publishes: with direct replies a
stream's chunks and its terminal message never cross the gateway (it publishes O(1)
messages per request, not O(tokens)); with them off, or with a node that ignores the
dispatch's ``direct`` (an old worker, played by tests/rawnode.py), everything is
relayed as before. The client side's rules for stale attempts are checked on their own.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.service import GatewayService
from shared import errors
from shared import messages as m
from shared.client import FedClient
from shared.config import GatewayConfig
from shared.streams import stale_terminal, take
from tests.helpers import Federation, eventually, federation
from tests.integration.test_protocol import StreamCall, ask, assert_ok_result, fast, slow
from tests.rawnode import RawNode, echo
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TOKENS = 50


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f


class Counted:
    """A gateway whose every publish is counted, by subject."""

    def __init__(self, svc: GatewayService, counts: collections.Counter[str]) -> None:
        self.svc = svc
        self.counts = counts

    def total(self) -> int:
        return sum(self.counts.values())

    def to(self, prefix: str) -> int:
        return sum(n for subject, n in self.counts.items() if subject.startswith(prefix))


async def counted_gateway(fed: Federation, config: GatewayConfig) -> Counted:
    """A gateway on a connection whose publishes are counted (wrapped before the
    gateway reads ``nc.publish``)."""
    nc = await fed.client()
    counts: collections.Counter[str] = collections.Counter()
    publish = nc.publish

    async def counting(
        subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
    ) -> None:
        counts[subject] += 1
        await publish(subject, payload, reply=reply, headers=headers)

    nc.publish = counting  # type: ignore[method-assign]
    svc = GatewayService(nc, config)
    await svc.start()
    fed.gateways.append(svc)
    return Counted(svc, counts)


async def stream_through(fed: Federation, nc: Client, gw: Counted) -> tuple[StreamCall, Msg, int]:
    """A 50-token stream from node n1, read raw (as ``nats req --wait-for-empty``); the
    gateway's publishes while it ran."""
    body = {"input": "direct", "stream": True, "params": {"max_tokens": TOKENS, "seed": 3}}
    before = gw.total()
    call = await StreamCall.open(nc, "infer.generate", body, headers={"traceparent": TRACE})
    terminal = await call.finish()
    await eventually(lambda: gw.svc.in_flight == 0, 2, "the gateway let go of the stream")
    call.assert_contiguous()
    assert len(call.chunks) == TOKENS
    assert call.text == expected_text("m", "direct", 3, TOKENS)
    return call, terminal, gw.total() - before


async def test_a_streams_chunks_reach_the_caller_without_crossing_the_gateway(
    fed: Federation, nc: Client
) -> None:
    gw = await counted_gateway(fed, fast())
    await fed.node("n1", slow(2), models={"m": ("generate",)})
    await fed.seen("n1")
    call, terminal, published = await stream_through(fed, nc, gw)
    inbox = call.sub.subject
    assert gw.counts[inbox] == 0  # neither a chunk nor the terminal came from the gateway
    assert published <= 5, gw.counts  # the dispatch, and a few chores: O(1), not O(tokens)
    hdrs = terminal.headers or {}
    assert (hdrs["Fed-Status"], hdrs["Fed-Served-By"], hdrs["Fed-Attempts"]) == ("ok", "n1", "1")
    assert (hdrs["Fed-Tokens"], hdrs["Fed-Finish-Reason"]) == (str(TOKENS), "length")
    assert hdrs["Fed-Request-Id"] and hdrs["Fed-Overhead-Us"].isdigit()
    assert hdrs["traceparent"] == TRACE
    assert all(c["attempt"] == 1 for c in call.chunks)  # DirectChunk: the dispatch's number
    stats = gw.svc.stats.snapshot()
    assert (stats.successful_requests, stats.total_tokens) == (1, TOKENS)


async def test_with_direct_replies_off_the_gateway_relays_every_chunk(
    fed: Federation, nc: Client
) -> None:
    gw = await counted_gateway(fed, fast(direct_replies=False))
    await fed.node("n1", slow(2), models={"m": ("generate",)})
    await fed.seen("n1")
    call, terminal, published = await stream_through(fed, nc, gw)
    assert gw.counts[call.sub.subject] == TOKENS + 1  # every chunk, then the terminal
    assert published >= TOKENS + 1
    assert "attempt" not in call.chunks[0]  # the node's plain chunk, forwarded
    assert (terminal.headers or {})["Fed-Tokens"] == str(TOKENS)


async def test_a_non_streaming_answer_comes_from_the_node_with_the_gateways_headers(
    fed: Federation, nc: Client
) -> None:
    gw = await counted_gateway(fed, fast())
    await fed.node("n1", models={"m": ("generate",)})
    await fed.seen("n1")
    before = gw.total()
    msg = await ask(nc, "infer.generate", {"input": "one", "request_id": "r-one"},
                    headers={"traceparent": TRACE})  # fmt: skip
    result = assert_ok_result(msg)
    assert (result["served_by"], result["attempt"]) == ("n1", 1)
    hdrs = msg.headers or {}
    assert (hdrs["Fed-Served-By"], hdrs["Fed-Attempts"], hdrs["Fed-Request-Id"]) == (
        "n1", "1", "r-one",
    )  # fmt: skip
    assert hdrs["traceparent"] == TRACE and hdrs["Fed-Overhead-Us"].isdigit()
    await eventually(lambda: gw.svc.in_flight == 0, 2)
    assert gw.to("_INBOX.") == 0 and gw.total() - before <= 3, gw.counts
    assert gw.svc.stats.snapshot().successful_requests == 1


async def test_a_node_that_ignores_direct_is_relayed_as_before(fed: Federation, nc: Client) -> None:
    """An old worker answers the dispatch's reply subject, chunks numbered from 1."""
    gw = await counted_gateway(fed, fast())
    old = await RawNode(await fed.client(), "old", echo).start()
    await fed.seen("old")
    body = {"input": "one two three four", "stream": True}
    call = await StreamCall.open(nc, "infer.generate", body)
    terminal = await call.finish()
    call.assert_contiguous()
    assert call.text == "one two three four "
    assert (terminal.headers or {})["Fed-Status"] == "ok"
    assert gw.counts[call.sub.subject] == 5  # relayed: four chunks and the terminal
    assert old.work[0]["direct"]["to"] == call.sub.subject  # it was offered, and ignored
    await old.stop()


async def test_a_fedclient_stream_and_the_caller_going_away(fed: Federation, nc: Client) -> None:
    svc = await fed.gateway(fast())
    node = await fed.node("n1", slow(20), models={"m": ("generate",)})
    await fed.seen("n1")
    client = FedClient(nc)
    async with client.stream("generate", "via client", params={"max_tokens": 12}) as s:
        text = "".join([c.text async for c in s])
    assert text == expected_text("m", "via client", None, 12)
    assert (s.served_by, s.tokens, s.attempts) == ("n1", 12, 1)
    # A caller that leaves: its node learns it from NATS and tells the gateway (probe).
    call = await StreamCall.open(
        nc, "infer.generate", {"stream": True, "params": {"max_tokens": 500}}
    )
    await call.until_chunks(2)
    await call.sub.unsubscribe()
    await eventually(lambda: not node._jobs, 3, "the node's job was cancelled")
    await eventually(lambda: svc.in_flight == 0, 2, "the gateway forgot the request")


async def test_a_direct_stream_fails_over_mid_stream_as_one_sequence(
    fed: Federation, nc: Client
) -> None:
    """The first node fails after 4 chunks (its error goes to the gateway); the second,
    told ``seq_from`` 4 and the resume, goes on at seq 5, to the caller directly."""
    gw = await counted_gateway(fed, fast())
    failing = SyntheticBackend(SyntheticOptions(fail_after_tokens=4, token_interval_ms=5))
    await fed.node("bad", failing, cost=0.0, models={"m": ("generate",)})
    await fed.seen("bad")
    await fed.node("good", slow(5), cost=1.0, models={"m": ("generate",)})
    await fed.seen("good")
    body = {"input": "over", "stream": True, "params": {"max_tokens": 12, "seed": 4}}
    call = await StreamCall.open(nc, "infer.generate", body)
    terminal = await call.finish()
    call.assert_contiguous()
    assert call.text == expected_text("m", "over", 4, 12)
    assert [c["attempt"] for c in call.chunks] == [1] * 4 + [2] * 8
    hdrs = terminal.headers or {}
    assert (hdrs["Fed-Served-By"], hdrs["Fed-Attempts"], hdrs["Fed-Tokens"]) == ("good", "2", "12")
    assert gw.counts[call.sub.subject] == 0 and gw.svc.failovers == 1


# -- the client's rules (shared/client.py), on their own ------------------------------


def chunk(seq: int, attempt: int = 0) -> m.DirectChunk:
    return m.DirectChunk(seq=seq, text="x", tokens=1, attempt=attempt)


def test_the_client_takes_the_next_chunk_and_drops_repeats_and_stale_attempts() -> None:
    assert take(chunk(1, 1), 0, 0)
    assert take(chunk(3, 2), 2, 1)  # a failover: the new attempt goes on at 3
    assert not take(chunk(2, 1), 2, 1)  # a repeat
    assert not take(chunk(4, 1), 3, 2)  # a late chunk of the attempt given up on
    assert take(chunk(3), 2, 0)  # relayed chunks carry no attempt


def test_the_client_ends_a_stream_it_cannot_continue() -> None:
    with pytest.raises(errors.Interrupted):
        take(chunk(4, 1), 2, 1)  # a gap
    with pytest.raises(errors.Interrupted):
        take(chunk(3, 2), 3, 1)  # attempt 2 resumed before what the caller holds


def test_an_older_attempts_success_terminal_is_not_the_end() -> None:
    def terminal(attempts: str) -> Msg:
        return Msg(None, subject="x", headers={"Fed-Status": "ok", "Fed-Attempts": attempts})  # type: ignore[arg-type]

    assert stale_terminal(terminal("1"), 2)
    assert not stale_terminal(terminal("2"), 2)
    assert not stale_terminal(terminal("1"), 0)


def test_the_dispatch_offers_direct_and_an_old_decoder_ignores_it() -> None:
    sent = {"request": {"input": "hi"}, "attempt": 2, "direct": {
        "to": "_INBOX.c.1", "observe": "_INBOX.g.1.d2", "probe": "_INBOX.g.1.c",
        "seq_from": 4, "headers": {"Fed-Attempts": "2"}}}  # fmt: skip
    dispatch = m.dispatch_decoder.decode(json.dumps(sent).encode())
    assert dispatch.direct is not None and dispatch.direct.seq_from == 4
    old = {k: v for k, v in sent.items() if k != "direct"}
    assert m.dispatch_decoder.decode(json.dumps(old).encode()).direct is None
