"""Request identity is scoped to the caller: a reused ``request_id`` never hands one
caller's answer to another (docs/protocol.md, "Request identity").

A request's identity is (``tenant_id``, ``request_id``); a resend (``Fed-Ack``) takes over
a request in flight only with the same tenant and the same body bytes. Anything else
with an id in flight is ``409 duplicate``; the same id under another tenant is another
request. Raw nats-py callers, a real nats-server, an in-process gateway and a raw node.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from tests.helpers import connect, eventually, federation
from tests.integration.test_protocol import fast
from tests.rawnode import RawNode

WORD_DELAY_S = 0.02


async def slow_echo(node: RawNode, dispatch: dict[str, Any], reply: str) -> None:
    """Echo the prompt word by word (a stream) or whole (a result), a little slowly."""
    request = dispatch["request"]
    words = request.get("input", "").split() or ["-"]
    if request.get("stream"):
        for i, word in enumerate(words, 1):
            await asyncio.sleep(WORD_DELAY_S)  # sleep-ok: a node's generation time
            chunk = {"seq": i, "text": word + " ", "tokens": 1}
            await node.nc.publish(reply, json.dumps(chunk).encode())
        await node.nc.publish(reply, b"", headers={"Fed-Tokens": str(len(words))})
    else:
        await asyncio.sleep(WORD_DELAY_S * len(words))  # sleep-ok: generation time
        body = {
            "request_id": dispatch["request_id"], "model": "m", "output": " ".join(words) + " ",
            "served_by": node.node_id, "region": "r1", "tokens": len(words),
            "latency_ms": 1.0, "attempt": dispatch["attempt"],
        }  # fmt: skip
        await node.nc.publish(reply, json.dumps(body).encode())


class Caller:
    """One raw caller: a request with a reply inbox, read to its end."""

    def __init__(self, nc: Client, body: dict[str, Any], ack: bool) -> None:
        self.nc = nc
        self.body = body
        self.ack = ack
        self.text = ""
        self.error: str | None = None
        self.ends = 0
        self.acked = asyncio.Event()
        self.done = asyncio.Event()
        self.messages: list[Any] = []

    async def send(self) -> None:
        inbox = self.nc.new_inbox()
        await self.nc.subscribe(inbox, cb=self._on_msg)
        headers = {"Fed-Ack": "1"} if self.ack else None
        await self.nc.publish(
            "infer.generate", json.dumps(self.body).encode(), reply=inbox, headers=headers
        )

    async def _on_msg(self, msg: Any) -> None:
        self.messages.append(msg)
        hdrs = msg.headers or {}
        if "Fed-Liveness" in hdrs and not msg.data:
            self.acked.set()
            return
        if "Fed-Error" in hdrs:
            self.error = hdrs["Fed-Error"]
            self.ends += 1
            self.done.set()
            return
        if self.body.get("stream"):
            if msg.data:
                self.text += json.loads(msg.data)["text"]
            else:
                self.ends += 1
                self.done.set()
        else:
            self.text = json.loads(msg.data)["output"]
            self.ends += 1
            self.done.set()


prompts = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta"]), min_size=2, max_size=5)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tenant_a=st.sampled_from([None, "t1", "t2"]),
    tenant_b=st.sampled_from([None, "t1", "t2"]),
    words_a=prompts,
    words_b=prompts,
    stream_a=st.booleans(),
    stream_b=st.booleans(),
    ack_b=st.booleans(),
)
def test_colliding_ids_never_leak(
    nats_url: str,
    tenant_a: str | None,
    tenant_b: str | None,
    words_a: list[str],
    words_b: list[str],
    stream_a: bool,
    stream_b: bool,
    ack_b: bool,
) -> None:
    """Two callers, one request id: each gets the answer to its own prompt, or the
    second gets 409; never the other's bytes, never two answers, never none."""
    words_a = [f"a-{w}" for w in words_a]
    # Same tenant and same bytes is the one case that is a legitimate resend.
    same = tenant_a == tenant_b and stream_a == stream_b
    words_b = words_a if same and ack_b and len(words_b) % 2 else [f"b-{w}" for w in words_b]
    asyncio.run(_collide(nats_url, tenant_a, tenant_b, words_a, words_b, stream_a, stream_b, ack_b))


async def _collide(
    url: str,
    tenant_a: str | None,
    tenant_b: str | None,
    words_a: list[str],
    words_b: list[str],
    stream_a: bool,
    stream_b: bool,
    ack_b: bool,
) -> None:
    async with federation(url) as fed:
        await fed.gateway(fast())
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        nc = await connect(url)
        try:
            body_a: dict[str, Any] = {"input": " ".join(words_a), "request_id": "X"}
            body_b: dict[str, Any] = {"input": " ".join(words_b), "request_id": "X"}
            body_a["stream"], body_b["stream"] = stream_a, stream_b
            if tenant_a:
                body_a["tenant_id"] = tenant_a
            if tenant_b:
                body_b["tenant_id"] = tenant_b
            a = Caller(nc, body_a, ack=True)
            b = Caller(nc, body_b, ack=ack_b)
            await a.send()
            await asyncio.wait_for(a.acked.wait(), 5)
            await b.send()
            resend = body_a == body_b and ack_b
            # A resend moves the request to the resender's inbox: only it gets the end.
            waits = [b.done.wait()] if resend else [a.done.wait(), b.done.wait()]
            await asyncio.wait_for(asyncio.gather(*waits), 10)
            await nc.flush()
            a_words = " ".join(words_a) + " "
            b_words = " ".join(words_b) + " "
            if resend:
                # The same caller resending: it takes the request over (one run).
                assert b.error is None and b.text == a_words
            else:
                assert a.error is None, a.error
                assert a.text == a_words
                assert a.ends == 1
                if (tenant_a or "") == (tenant_b or ""):
                    assert b.error == "duplicate", (b.error, b.text)
                else:
                    assert b.error is None and b.text == b_words
                assert "a-" not in b.text or b_words == a_words
            assert b.ends == 1
            work = [d["request"]["input"] for d in node.work]
            assert work.count(body_a["input"]) == 1, work
        finally:
            await nc.close()
            await node.stop()


async def test_cancel_is_scoped_to_the_tenant(nats_url: str) -> None:
    """``fed.cancel.X`` from tenant t2 does not cancel t1's request X."""
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        nc = await fed.client()
        body = {"input": "one two three four five six", "request_id": "X", "stream": True}
        a = Caller(nc, {**body, "tenant_id": "t1"}, ack=True)
        await a.send()
        await asyncio.wait_for(a.acked.wait(), 5)
        await nc.publish("fed.cancel.X", b'{"tenant_id": "t2"}')
        await nc.publish("fed.cancel.X", b"")  # no tenant: names tenant-less requests only
        await asyncio.wait_for(a.done.wait(), 5)
        assert a.error is None and a.text.split() == body["input"].split()
        b = Caller(nc, {**body, "tenant_id": "t1", "request_id": "Y"}, ack=True)
        await b.send()
        await asyncio.wait_for(b.acked.wait(), 5)
        await nc.publish("fed.cancel.Y", b'{"tenant_id": "t1"}')
        await asyncio.wait_for(b.done.wait(), 5)
        assert b.error == "cancelled"
        await eventually(lambda: "Y" in node.cancels, 5, "the node heard the cancel")
        await node.stop()


async def test_generated_request_ids_are_16_hex(nats_url: str) -> None:
    """A request without an id gets one of the documented format (16 hex digits)."""
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        nc = await fed.client()
        ids = set()
        for _ in range(5):
            msg = await nc.request("infer.generate", b'{"input": "hi"}', timeout=5)
            rid = msg.headers["Fed-Request-Id"]
            assert len(rid) == 16 and all(c in "0123456789abcdef" for c in rid), rid
            ids.add(rid)
        assert len(ids) == 5
        await node.stop()


async def test_one_client_two_calls_with_one_id_keep_their_own_answers(nats_url: str) -> None:
    """The Python client routes replies per send, never per request id: two tenants'
    calls with the same id in one process each get their own answer, once."""
    from shared.client import FedClient

    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        client = FedClient(await fed.client())
        a, b = await asyncio.gather(
            client.infer("generate", "a-one a-two a-three", request_id="X", tenant_id="t1"),
            client.infer("generate", "b-one b-two", request_id="X", tenant_id="t2"),
        )
        assert a.output == "a-one a-two a-three "
        assert b.output == "b-one b-two "
        inputs = sorted(d["request"]["input"] for d in node.work)
        assert inputs == ["a-one a-two a-three", "b-one b-two"]  # each ran once
        await node.stop()


async def test_two_tenants_one_id_on_one_worker_both_run(nats_url: str) -> None:
    """A real worker keys its jobs by the gateway's job id: two tenants' requests with
    one request id on the same node both complete (no "newest dispatch wins" between
    them), and a cancel stops only its own."""
    from shared.client import FedClient
    from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        slow = SyntheticBackend(SyntheticOptions(token_interval_ms=30))
        await fed.node("w1", slow, models={"m": ("generate",)})
        await fed.seen("w1")
        client = FedClient(await fed.client())

        async def run(tenant: str, text: str) -> str:
            async with client.stream(
                "generate", text, request_id="same", tenant_id=tenant, model="m"
            ) as s:
                return "".join([c.text async for c in s])

        a, b = await asyncio.gather(run("t1", "first prompt"), run("t2", "second prompt"))
        assert a == expected_text("m", "first prompt")
        assert b == expected_text("m", "second prompt")


async def test_the_subject_that_lost_a_resent_request_gets_a_409(nats_url: str) -> None:
    """Same tenant, same id, same bytes from a second reply subject (a resend): the
    request moves there, and the first subject is told so (409) instead of hanging."""
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        node = await RawNode(await fed.client(), "n1", slow_echo).start()
        await fed.seen("n1")
        nc = await fed.client()
        body = {"input": "one two three four five six", "request_id": "R", "stream": True}
        first = Caller(nc, body, ack=True)
        await first.send()
        await asyncio.wait_for(first.acked.wait(), 5)
        second = Caller(nc, body, ack=True)
        await second.send()
        await asyncio.wait_for(asyncio.gather(first.done.wait(), second.done.wait()), 10)
        assert first.error == "duplicate" and first.ends == 1
        assert second.error is None and second.text.split() == body["input"].split()
        assert len(node.work) == 1  # the prompt ran once
        await node.stop()
