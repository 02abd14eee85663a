"""The wire contract, section 1 (services), tested as a service or the `nats` CLI uses it.

Every test talks raw nats-py to a real nats-server: ``nc.request`` for one reply, or a
publish with a reply inbox read until the empty-body message (``nats req
--wait-for-empty``). Bodies are JSON; subjects and header names are written out
literally on purpose: these tests pin the contract (docs/protocol.md), not the code's
constants. Gateways and nodes run in-process, each on its own connection.

The wire helpers at the top are shared by the other ``test_*`` files of this folder.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.config import GatewayConfig
from tests.helpers import Federation, eventually, federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

# -- wire helpers (shared by this folder's tests) ---------------------------------------

RESULT_FIELDS = {
    "request_id",
    "model",
    "output",
    "served_by",
    "region",
    "tokens",
    "latency_ms",
    "attempt",
}


def fast(**overrides: Any) -> GatewayConfig:
    """A gateway config with timeouts small enough for tests (probing off), and the
    deterministic least_latency strategy: these tests predict which node serves (the
    default, power_of_two, is tested in test_spread.py and tests/core)."""
    values: dict[str, Any] = {
        "strategy": "least_latency",
        "first_chunk_timeout_s": 1.0,
        "stall_timeout_s": 0.5,
        "request_timeout_s": 5.0,
        "probe_interval_s": 60.0,
    }
    values.update(overrides)
    return GatewayConfig(**values)


def payload(value: Any) -> bytes:
    """Bytes as given; anything else as JSON."""
    return value if isinstance(value, bytes) else json.dumps(value).encode()


async def ask(
    nc: Client,
    subject: str,
    value: Any = b"",
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Msg:
    """``nats req <subject> <body>``: the first reply."""
    return await nc.request(subject, payload(value), timeout=timeout, headers=headers)


def assert_error(msg: Msg, code: int, kind: str) -> None:
    """An error as the contract writes it: empty body and the three error headers."""
    hdrs = msg.headers or {}
    assert msg.data == b"", msg.data
    assert hdrs.get("Nats-Service-Error-Code") == str(code), hdrs
    assert hdrs.get("Fed-Error") == kind, hdrs
    assert hdrs.get("Nats-Service-Error"), hdrs


def assert_ok_result(msg: Msg) -> dict[str, Any]:
    """A non-streaming success: the contract's body fields and gateway headers."""
    hdrs = msg.headers or {}
    assert "Nats-Service-Error-Code" not in hdrs, hdrs
    result = json.loads(msg.data)
    assert RESULT_FIELDS <= result.keys(), result
    assert hdrs["Fed-Served-By"] == result["served_by"]
    assert int(hdrs["Fed-Attempts"]) >= 1
    assert int(hdrs["Fed-Overhead-Us"]) >= 0
    return result


async def assert_serves(nc: Client, capability: str = "generate") -> None:
    """The gateway still answers a valid request."""
    assert_ok_result(await ask(nc, f"infer.{capability}", {"input": "still there?"}))


class StreamCall:
    """A streaming request as ``nats req --wait-for-empty`` makes it."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.chunks: list[dict[str, Any]] = []
        self.terminal: Msg | None = None

    @classmethod
    async def open(
        cls, nc: Client, subject: str, value: Any, headers: dict[str, str] | None = None
    ) -> StreamCall:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, payload(value), reply=inbox, headers=headers)
        return cls(sub)

    async def next(self, timeout: float = 5.0) -> Msg:
        """The next message (a chunk, or the empty-body terminal)."""
        assert self.terminal is None, "read past the terminal message"
        msg = await self.sub.next_msg(timeout=timeout)
        if msg.data:
            self.chunks.append(json.loads(msg.data))
        else:
            self.terminal = msg
        return msg

    async def until_chunks(self, n: int, timeout: float = 5.0) -> None:
        """Read until at least ``n`` chunks arrived (fails on an early terminal)."""
        while len(self.chunks) < n:
            await self.next(timeout)
            assert self.terminal is None, f"stream ended early: {self.terminal.headers}"

    async def finish(self, timeout: float = 10.0) -> Msg:
        """Read to the terminal message and return it."""
        while self.terminal is None:
            await self.next(timeout)
        await self.sub.unsubscribe()
        return self.terminal

    @property
    def text(self) -> str:
        return "".join(c["text"] for c in self.chunks)

    def assert_contiguous(self) -> None:
        """seq 1..n, no gap, no repeat; every text non-empty; tokens >= 1."""
        assert [c["seq"] for c in self.chunks] == list(range(1, len(self.chunks) + 1))
        assert all(isinstance(c["text"], str) and c["text"] for c in self.chunks)
        assert all(isinstance(c["tokens"], int) and c["tokens"] >= 1 for c in self.chunks)


async def nodes_view(nc: Client) -> dict[str, dict[str, Any]]:
    """``nats req fed.gateway.nodes ''``, indexed by node id."""
    reply = json.loads((await ask(nc, "fed.gateway.nodes")).data)
    return {n["node_id"]: n for n in reply["nodes"]}


def slow(interval_ms: float = 20.0) -> SyntheticBackend:
    return SyntheticBackend(SyntheticOptions(token_interval_ms=interval_ms))


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f


async def one_node(fed: Federation, backend: SyntheticBackend | None = None, **gw: Any) -> Any:
    """A gateway (fast config plus ``gw``) and node n1 serving model m for generate."""
    svc = await fed.gateway(fast(**gw))
    node = await fed.node("n1", backend, region="eu", models={"m": ("generate",), "e": ("embed",)})
    await fed.seen("n1")
    return svc, node


# -- replies ---------------------------------------------------------------------------


async def test_non_streaming_reply(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    body = {
        "input": "hi",
        "request_id": "r-1",
        "tenant_id": "acme",
        "params": {"max_tokens": 5, "seed": 7},
        "some_future_field": {"ignored": True},  # unknown fields are ignored
    }
    msg = await ask(nc, "infer.generate", body)
    result = assert_ok_result(msg)
    assert result["request_id"] == "r-1"
    assert result["model"] == "m"
    assert result["output"] == expected_text("m", "hi", 7, 5)
    assert result["served_by"] == "n1"
    assert result["region"] == "eu"
    assert result["tokens"] == 5
    assert isinstance(result["latency_ms"], int | float) and result["latency_ms"] >= 0
    assert result["attempt"] == 1
    assert msg.headers is not None
    assert msg.headers["Fed-Served-By"] == "n1"
    assert msg.headers["Fed-Attempts"] == "1"
    assert msg.headers["Fed-Request-Id"] == "r-1"  # extension


async def test_empty_body_means_empty_object(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    result = assert_ok_result(await ask(nc, "infer.generate", b""))
    assert result["output"] == expected_text("m", "", None, 10)
    assert result["tokens"] == 10
    assert result["request_id"]  # generated when the service gives none


async def test_embed_reply_carries_embedding(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    result = assert_ok_result(await ask(nc, "infer.embed", {"input": "two words"}))
    assert result["model"] == "e"
    embedding = result["embedding"]
    assert isinstance(embedding, list) and len(embedding) == 8
    assert all(isinstance(x, float) for x in embedding)


async def test_streaming_reply(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    call = await StreamCall.open(
        nc,
        "infer.generate",
        {
            "input": "hi",
            "stream": True,
            "request_id": "s-1",
            "params": {"max_tokens": 12, "seed": 3},
        },
    )
    terminal = await call.finish()
    call.assert_contiguous()
    assert len(call.chunks) == 12
    assert call.text == expected_text("m", "hi", 3, 12)
    assert terminal.data == b""
    hdrs = terminal.headers or {}
    assert hdrs["Fed-Status"] == "ok"
    assert hdrs["Fed-Served-By"] == "n1"
    assert hdrs["Fed-Tokens"] == "12"
    assert hdrs["Fed-Attempts"] == "1"
    assert hdrs["Fed-Finish-Reason"] == "length"
    assert int(hdrs["Fed-Overhead-Us"]) >= 0
    assert hdrs["Fed-Request-Id"] == "s-1"  # extension
    assert "Nats-Service-Error-Code" not in hdrs


async def test_traceparent_comes_back_on_the_reply(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    msg = await ask(nc, "infer.generate", {"input": "x"}, headers=trace)
    assert_ok_result(msg)
    assert (msg.headers or {}).get("traceparent") == trace["traceparent"]


# -- errors: 400 -----------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param("infer.generate", b"not json", id="not-json"),
    pytest.param("infer.generate", b"[1, 2]", id="not-an-object"),
    pytest.param("infer.generate", {"input": 5}, id="input-not-string"),
    pytest.param("infer.generate", {"stream": "yes"}, id="stream-not-bool"),
    pytest.param("infer.generate", {"params": []}, id="params-not-object"),
    pytest.param("infer.generate", {"data": "!!not base64!!"}, id="data-not-base64"),
    pytest.param("infer.generate", {"qos": {"privacy": "secret"}}, id="bad-privacy-enum"),
    pytest.param("infer.generate", {"qos": {"cost_tolerance": 101}}, id="cost-tolerance-range"),
    pytest.param("infer.generate", {"qos": {"allowed_regions": []}}, id="empty-allowed-regions"),
    pytest.param("infer.generate", {"request_id": "has space"}, id="request-id-chars"),
    pytest.param("infer.generate", {"request_id": ""}, id="request-id-empty"),
    pytest.param("infer.generate", {"request_id": "x" * 129}, id="request-id-too-long"),
    pytest.param("infer.generate", {"timeout_ms": 0}, id="timeout-zero"),
    pytest.param("infer.generate", {"timeout_ms": "soon"}, id="timeout-not-int"),
    pytest.param("infer.a.b", {"input": "hi"}, id="subject-extra-tokens"),
    pytest.param("infer.Generate", {"input": "hi"}, id="capability-uppercase"),
    pytest.param("infer.gen+rate", {"input": "hi"}, id="capability-bad-char"),
]


@pytest.mark.parametrize(("subject", "body"), BAD_REQUESTS)
async def test_bad_request(fed: Federation, nc: Client, subject: str, body: Any) -> None:
    _, node = await one_node(fed)
    assert_error(await ask(nc, subject, body), 400, "bad_request")
    assert node.served == 0  # nothing reached a node
    await assert_serves(nc)
    assert node.served == 1


async def test_oversize_payload_is_a_400_naming_the_limit(fed: Federation, nc: Client) -> None:
    await one_node(fed, max_payload_bytes=2048)
    big = {"input": "x" * 4096}  # over the gateway's limit, far under NATS's 1 MiB
    msg = await ask(nc, "infer.generate", big)
    assert_error(msg, 400, "bad_request")
    assert "exceeds the limit of 2048 bytes" in msg.headers["Nats-Service-Error"]
    await assert_serves(nc)


async def test_bad_request_on_a_stream_is_one_error_message(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    call = await StreamCall.open(nc, "infer.generate", {"stream": True, "qos": {"privacy": 3}})
    terminal = await call.finish()
    assert call.chunks == []
    assert_error(terminal, 400, "bad_request")


# -- errors: routing -------------------------------------------------------------------


async def test_no_capacity(fed: Federation, nc: Client) -> None:
    await one_node(fed)
    assert_error(await ask(nc, "infer.sentiment", {"input": "great"}), 404, "no_capacity")
    assert_error(await ask(nc, "infer.generate", {"model": "other"}), 404, "no_capacity")
    await assert_serves(nc)


async def test_draining_only_node_is_all_unhealthy(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast())
    heartbeat = {
        "node_id": "d1",
        "incarnation": "i1",
        "models": [{"model": "m", "capabilities": ["generate"]}],
        "capacity": 4,
        "draining": True,
        "interval_ms": 60_000,
    }
    await nc.publish("fed.heartbeat.d1", payload(heartbeat))
    await eventually(lambda: _has_node(nc, "d1"), 5, "d1 in the catalog")
    assert_error(await ask(nc, "infer.generate", {"input": "x"}), 503, "all_unhealthy")


async def test_unhealthy_only_node_is_all_unhealthy(fed: Federation, nc: Client) -> None:
    failing = SyntheticBackend(SyntheticOptions(fail_rate=1.0))
    await one_node(fed, failing, max_retries=0)
    # Three failures make the node UNHEALTHY (health failure_threshold 3).
    for _ in range(3):
        assert_error(await ask(nc, "infer.generate", {"input": "x"}), 500, "internal")
    assert (await nodes_view(nc))["n1"]["health"] == "unhealthy"
    assert_error(await ask(nc, "infer.generate", {"input": "x"}), 503, "all_unhealthy")


async def test_policy_violation(fed: Federation, nc: Client) -> None:
    await one_node(fed)  # n1: privacy internal, region eu
    confidential = {"input": "x", "qos": {"privacy": "confidential"}}
    assert_error(await ask(nc, "infer.generate", confidential), 403, "policy_violation")
    elsewhere = {"input": "x", "qos": {"allowed_regions": ["us", "ap"]}}
    assert_error(await ask(nc, "infer.generate", elsewhere), 403, "policy_violation")
    inside = {"input": "x", "qos": {"allowed_regions": ["eu"], "privacy": "public"}}
    assert assert_ok_result(await ask(nc, "infer.generate", inside))["served_by"] == "n1"


async def test_overloaded(fed: Federation, nc: Client) -> None:
    svc = await fed.gateway(fast(max_queue=0))
    node = await fed.node("n1", slow(30), capacity=1, models={"m": ("generate",)})
    await fed.seen("n1")
    first = await StreamCall.open(
        nc, "infer.generate", {"stream": True, "request_id": "long", "params": {"max_tokens": 200}}
    )
    await first.until_chunks(1)
    assert_error(await ask(nc, "infer.generate", {"input": "x"}), 429, "overloaded")
    # Free the node and the gateway serves again.
    await nc.publish("fed.cancel.long", b"")
    assert_error(await first.finish(), 499, "cancelled")
    await eventually(lambda: not node._jobs and svc.in_flight == 0, 5, "node freed")
    await assert_serves(nc)


async def test_gateways_share_requests_in_one_queue_group(fed: Federation, nc: Client) -> None:
    gateways = [await fed.gateway(fast()) for _ in range(2)]
    await fed.node("n1", capacity=64, models={"m": ("generate",)})
    await fed.seen("n1")
    replies = await asyncio.gather(*(ask(nc, "infer.generate", {"input": "q"}) for _ in range(20)))
    assert all(assert_ok_result(r)["served_by"] == "n1" for r in replies)
    counts = [g.stats.total_requests for g in gateways]
    assert sum(counts) == 20  # each request handled by exactly one gateway
    assert all(counts), counts


async def test_overloaded_request_waits_in_queue(fed: Federation, nc: Client) -> None:
    await fed.gateway(fast(max_queue=10))
    await fed.node("n1", slow(20), capacity=1, models={"m": ("generate",)})
    await fed.seen("n1")
    body = {"stream": True, "params": {"max_tokens": 40}}
    first = await StreamCall.open(nc, "infer.generate", body)
    await first.until_chunks(1)
    queued = asyncio.ensure_future(ask(nc, "infer.generate", {"input": "q"}, timeout=5))
    await eventually(lambda: _stat(nc, "queued", 1), 2, "second request queued")
    assert (await first.finish()).headers["Fed-Status"] == "ok"  # type: ignore[index]
    assert assert_ok_result(await queued)["served_by"] == "n1"
    assert await _stat(nc, "queued", 0)


# -- errors: deadlines, cancel, duplicates, interruption -------------------------------


async def test_timeout(fed: Federation, nc: Client) -> None:
    _, node = await one_node(
        fed, SyntheticBackend(SyntheticOptions(hang=True)), first_chunk_timeout_s=5
    )
    t0 = time.monotonic()
    msg = await ask(nc, "infer.generate", {"input": "x", "timeout_ms": 300})
    elapsed = time.monotonic() - t0
    assert_error(msg, 504, "timeout")
    assert 0.29 <= elapsed < 2.0, elapsed  # the request's deadline, not the 5 s first-chunk one
    await eventually(lambda: not node._jobs, 5, "the hung job was cancelled on the node")


async def test_first_chunk_timeout_exhausting_retries_is_timeout(
    fed: Federation, nc: Client
) -> None:
    await one_node(fed, SyntheticBackend(SyntheticOptions(hang=True)), first_chunk_timeout_s=0.3)
    call = await StreamCall.open(nc, "infer.generate", {"stream": True})
    assert_error(await call.finish(), 504, "timeout")


async def test_cancel_mid_stream(fed: Federation, nc: Client) -> None:
    svc, node = await one_node(fed, slow(20))
    call = await StreamCall.open(
        nc, "infer.generate", {"stream": True, "request_id": "c-1", "params": {"max_tokens": 500}}
    )
    await call.until_chunks(2)
    assert node._jobs  # the node is generating
    await nc.publish("fed.cancel.c-1", b"")
    terminal = await call.finish()
    assert_error(terminal, 499, "cancelled")
    call.assert_contiguous()
    await eventually(lambda: not node._jobs, 5, "node stopped generating")
    assert node.served == 0
    assert svc.in_flight == 0
    await assert_serves(nc)


async def test_duplicate_request_id(fed: Federation, nc: Client) -> None:
    await one_node(fed, slow(20))
    body = {"stream": True, "request_id": "dup-1", "params": {"max_tokens": 15}}
    first = await StreamCall.open(nc, "infer.generate", body)
    await first.until_chunks(1)
    assert_error(await ask(nc, "infer.generate", body), 409, "duplicate")
    # The first stream is untouched, and the id is free again once it is answered.
    terminal = await first.finish()
    assert (terminal.headers or {})["Fed-Status"] == "ok"
    first.assert_contiguous()
    assert len(first.chunks) == 15
    again = assert_ok_result(await ask(nc, "infer.generate", {"request_id": "dup-1"}))
    assert again["request_id"] == "dup-1"


async def test_non_resumable_stream_losing_its_node_is_interrupted(
    fed: Federation, nc: Client
) -> None:
    svc = await fed.gateway(fast())
    nodes = [await fed.node(n, slow(30), models={"whisper": ("transcribe",)}) for n in ("t1", "t2")]
    await fed.seen("t1", "t2")
    call = await StreamCall.open(
        nc, "infer.transcribe", {"stream": True, "data": "AAEC", "params": {"max_tokens": 100}}
    )
    await call.until_chunks(3)
    serving = next(n for n in nodes if n._jobs)
    await serving.nc.close()  # the node's process is gone (its subscriptions with it)
    terminal = await call.finish()
    assert_error(terminal, 502, "interrupted")
    call.assert_contiguous()
    assert len(call.chunks) >= 3
    survivor = next(n for n in nodes if n is not serving)
    assert survivor.served == 0 and not survivor._jobs  # no resume for transcribe
    assert svc.in_flight == 0
    await assert_serves(nc, "transcribe")


async def _has_node(nc: Client, node_id: str) -> bool:
    return node_id in await nodes_view(nc)


async def _stat(nc: Client, key: str, value: Any) -> bool:
    return bool(json.loads((await ask(nc, "fed.gateway.stats")).data)[key] == value)
