"""Prefix-cache-aware routing and SLO admission across gateways (issue 14, points 2-3).

Two gateways of one queue group on a real nats-server, nodes played over raw NATS
(their heartbeats can carry engine signals): a conversation's turns land on one node
whichever gateway takes them, unrelated prompts still spread, a node that leaves is
forgotten by every gateway's index, and a request whose TTFT SLO no node can meet is
answered at once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import aiohttp

from gateway.http import FrontDoor
from gateway.service import GatewayService
from tests.helpers import Federation, eventually, federation
from tests.integration.test_blame import request
from tests.integration.test_protocol import fast
from tests.rawnode import RawNode, echo

SYSTEM = "You are the support assistant of a large federation of inference nodes. " * 40


class EngineNode(RawNode):
    """A raw node whose heartbeats carry ``engine`` signals (``self.engine``)."""

    engine: dict[str, Any] | None = None

    def heartbeat(self) -> bytes:
        body = json.loads(super().heartbeat())
        if self.engine is not None:
            body["engine"] = {**self.engine, "measured_at": int(time.time() * 1000)}
        return json.dumps(body).encode()


async def two_nodes(fed: Federation, **engines: dict[str, Any] | None) -> dict[str, EngineNode]:
    out = {}
    for node_id in ("a", "b"):
        node = EngineNode(await fed.client(), node_id, echo)
        node.engine = engines.get(node_id)
        out[node_id] = await node.start()
    await fed.seen("a", "b")
    return out


def served_by(msg: Any) -> str:
    assert not (msg.headers or {}).get("Fed-Error"), msg.headers
    return str(json.loads(msg.data)["served_by"])


def held_by(gw: GatewayService, text: str) -> tuple[int, list[str]]:
    """The deepest prefix of ``text`` ``gw``'s index holds, and its holders."""
    keys = gw.router.affinity.hashes(_request(text))
    return gw.router.prefixes.match(keys, gw.clock()).deepest()


def _request(text: str) -> Any:
    from shared.messages import InferRequest

    return InferRequest(capability="generate", input=text)


async def test_a_conversation_sticks_to_one_node_across_two_gateways(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gws = [await fed.gateway(fast(strategy="power_of_two")) for _ in range(2)]
        await two_nodes(fed)
        nc = await fed.client()
        decisions: list[dict[str, Any]] = []

        async def on_decision(msg: Any) -> None:
            decisions.append(json.loads(msg.data))

        await nc.subscribe("fed.decisions", cb=on_decision)
        await nc.flush()
        # Unrelated prompts (no shared leading block) still spread over both nodes.
        spread: Counter[str] = Counter()
        for i in range(30):
            spread[served_by(await request(nc, {"input": f"{i} unrelated question " * 30}))] += 1
        assert min(spread.values()) >= 6, spread
        # A conversation: the same long system prompt, a growing history.
        sticky: Counter[str] = Counter()
        history = SYSTEM
        for turn in range(20):
            history += f"\nuser: question number {turn}\nassistant:"
            node = served_by(await request(nc, {"input": history}))
            sticky[node] += 1
            history += f" answer {turn}"
            # Both gateways learn where it went (fed.prefix.<node>): same index everywhere.
            await eventually(
                lambda h=history, n=node: all(
                    n in held_by(gw, h)[1] and held_by(gw, h)[0] > 0 for gw in gws
                ),
                5.0,
                "both gateways hold the turn",
            )
        share = max(sticky.values()) / 20
        print(f"conversation share on its node: {share:.0%} {dict(sticky)}; spread {spread}")
        assert share >= 0.8, sticky
        assert all(gw.prefixes is not None and gw.prefixes.applied > 0 for gw in gws)
        # fed.decisions and the dry run show the terms: the later turns were cache hits.
        await eventually(lambda: len(decisions) >= 50, 5.0, "every decision published")
        hits = [d for d in decisions if d.get("cache_match", 0) > 0.5]
        assert len(hits) >= 15 and all(d["predicted_ttft_ms"] >= 0 for d in hits), hits[:3]
        probe = json.dumps({"input": history + " more", "capability": "generate"}).encode()
        reply = json.loads((await nc.request("fed.gateway.route.generate", probe)).data)
        by_node = {c["node_id"]: c for c in reply["candidates"]}
        warm = max(sticky, key=lambda n: sticky[n])
        assert by_node[warm]["cache_match"] > 0.9, by_node
        assert by_node[warm]["predicted_ttft_ms"] < by_node[_other(warm)]["predicted_ttft_ms"]


async def test_a_node_that_leaves_is_forgotten_by_every_index(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gws = [await fed.gateway(fast(strategy="power_of_two")) for _ in range(2)]
        nodes = await two_nodes(fed)
        nc = await fed.client()
        node = served_by(await request(nc, {"input": SYSTEM}))
        await eventually(lambda: all(gw.router.prefixes.node_entries(node) > 0 for gw in gws), 5.0)
        await nodes[node].stop()  # publishes fed.leave.<node>
        await eventually(
            lambda: all(
                gw.router.prefixes.node_entries(node) == 0 and gw.catalog.node(node) is None
                for gw in gws
            ),
            5.0,
            "every gateway forgot the node",
        )
        assert served_by(await request(nc, {"input": SYSTEM + " next"})) == _other(node)


async def test_slo_routes_to_a_node_that_meets_it_or_answers_at_once(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast(strategy="power_of_two", request_timeout_s=20.0))
        nodes = await two_nodes(fed, a={"ttft_p50_ms": 4000.0}, b={"ttft_p50_ms": 40.0})
        nc = await fed.client()
        body = {"input": "hello", "qos": {"max_ttft_ms": 500}, "timeout_ms": 20_000}
        got: Counter[str] = Counter()
        for _ in range(10):
            got[served_by(await request(nc, body))] += 1
        assert got == Counter({"b": 10})
        # Now b is slow too: nobody meets 500 ms now -> 429 slo_unmet with Retry-After.
        nodes["b"].engine = {"ttft_p50_ms": 4000.0}
        await nc.publish("fed.heartbeat.b", nodes["b"].heartbeat())
        gw = fed.gateways[0]
        await eventually(lambda: (gw.catalog.node("b").engine or _NO).ttft_p50_ms == 4000.0)
        start = time.monotonic()
        msg = await request(nc, body)
        elapsed = time.monotonic() - start
        hdrs = msg.headers or {}
        assert hdrs.get("Fed-Error") == "slo_unmet" and hdrs.get("Nats-Service-Error-Code") == "429"
        assert int(hdrs["Retry-After"]) >= 1
        assert elapsed < 2.0, elapsed  # at once, not after its 20 s deadline
        # A prompt whose prefill alone is predicted past the SLO: 503 slo_unattainable.
        huge = {**body, "input": "x" * 200_000, "qos": {"max_ttft_ms": 1000}}
        msg = await request(nc, huge)
        assert (msg.headers or {}).get("Fed-Error") == "slo_unattainable"
        assert not any(d["request"].get("input") == "hello" for d in nodes["a"].work)


async def test_front_door_max_ttft_header(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        gw = await fed.gateway(fast(strategy="power_of_two", request_timeout_s=20.0))
        await two_nodes(fed, a={"ttft_p50_ms": 4000.0}, b={"ttft_p50_ms": 3000.0})
        front = FrontDoor(gw, port=0)
        await front.start()
        try:
            url = f"http://127.0.0.1:{front.port}/v1/completions"
            body = {"model": "m", "prompt": "hello"}
            async with aiohttp.ClientSession() as http:
                hdr = {"x-fedgate-max-ttft-ms": "500"}
                async with http.post(url, json=body, headers=hdr) as resp:
                    assert resp.status == 429, await resp.text()
                    assert int(resp.headers["Retry-After"]) >= 1
                async with http.post(url, json=body, headers={"x-fedgate-max-ttft-ms": "x"}) as r:
                    assert r.status == 400
                async with http.post(url, json=body) as resp:  # no SLO: served
                    assert resp.status == 200, await resp.text()
        finally:
            await front.stop()


def _other(node: str) -> str:
    return "b" if node == "a" else "a"


class _No:
    ttft_p50_ms = None


_NO = _No()
