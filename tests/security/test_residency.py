"""Residency and privacy hold under failures: property-tested on a live federation.

Nodes in three regions at several privacy levels, some failing before their first
token and some mid-stream, serve requests with random ``allowed_regions`` and privacy.
Every node that received a dispatch for a request (recorded by its backend) and the
node named by ``Fed-Served-By`` must satisfy the request's policy, retries and
mid-stream failovers included.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from shared.config import GatewayConfig
from shared.messages import Privacy
from tests.helpers import Federation, federation
from worker.backends.base import Job, Piece
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text

pytestmark = pytest.mark.slow

LEVELS = ["public", "internal", "confidential", "restricted"]
NODES = {  # node id: (region, privacy, failure)
    "eu-1": ("eu", "restricted", {}),
    "eu-2": ("eu", "confidential", {"fail_after_tokens": 3}),
    "us-1": ("us", "restricted", {}),
    "us-2": ("us", "internal", {"fail_rate": 1.0}),
    "ap-1": ("ap", "public", {}),
    "ap-2": ("ap", "confidential", {"fail_after_tokens": 2}),
}
DISPATCHED: dict[str, set[str]] = defaultdict(set)
SEEN: Counter[str] = Counter()
"""Outcomes over all examples (printed at teardown, to show failures were exercised)."""


class Recording:
    """A synthetic backend that records which request ids reached its node."""

    def __init__(self, node_id: str, **options: Any) -> None:
        self.node_id = node_id
        self.inner = SyntheticBackend(SyntheticOptions(token_interval_ms=2, **options))

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        DISPATCHED[job.request.request_id or ""].add(self.node_id)
        async for piece in self.inner.stream(job):
            yield piece


def allowed(regions: list[str] | None, privacy: str) -> set[str]:
    return {
        n
        for n, (region, level, _) in NODES.items()
        if (regions is None or region in regions) and LEVELS.index(level) >= LEVELS.index(privacy)
    }


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f
    print(f"[residency] outcomes over the examples: {dict(sorted(SEEN.items()))}")


async def start(fed: Federation) -> None:
    await fed.gateway(
        GatewayConfig(
            first_chunk_timeout_s=1.0,
            stall_timeout_s=0.5,
            request_timeout_s=5.0,
            probe_interval_s=0.3,
            max_retries=5,
        )
    )
    for node_id, (region, level, failure) in NODES.items():
        await fed.node(
            node_id,
            Recording(node_id, **failure),
            region=region,
            privacy=Privacy(level),
            models={"m": ("generate",)},
        )
    await fed.seen(*NODES)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    regions=st.none()
    | st.lists(st.sampled_from(["eu", "us", "ap", "mars"]), min_size=1, max_size=3, unique=True),
    privacy=st.sampled_from(LEVELS),
    stream=st.booleans(),
    max_tokens=st.integers(4, 8),
)
async def test_never_served_outside_policy(
    fed: Federation,
    nc: Client,
    regions: list[str] | None,
    privacy: str,
    stream: bool,
    max_tokens: int,
) -> None:
    if not fed.gateways:
        await start(fed)
    rid = f"res-{secrets.token_hex(4)}"
    qos: dict[str, Any] = {"privacy": privacy}
    if regions is not None:
        qos["allowed_regions"] = regions
    body = {
        "input": rid,
        "request_id": rid,
        "stream": stream,
        "qos": qos,
        "params": {"max_tokens": max_tokens},
    }
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("infer.generate", json.dumps(body).encode(), reply=inbox)
    texts: list[str] = []
    while True:
        msg = await sub.next_msg(timeout=10)
        if msg.data and stream:
            texts.append(json.loads(msg.data)["text"])
            continue
        break
    await sub.unsubscribe()
    hdrs = msg.headers or {}
    ok_nodes = allowed(regions, privacy)
    reached = DISPATCHED.pop(rid, set())
    assert reached <= ok_nodes, (body, reached)
    SEEN["dispatched to >1 node"] += len(reached) > 1
    SEEN[hdrs.get("Fed-Error", "ok")] += 1
    if "Nats-Service-Error-Code" in hdrs:
        if not ok_nodes:
            assert hdrs["Fed-Error"] == "policy_violation" and not reached, hdrs
        return
    served = hdrs["Fed-Served-By"]
    assert served in ok_nodes, (body, served)
    output = "".join(texts) if stream else json.loads(msg.data)["output"]
    assert output == expected_text("m", rid, None, max_tokens)
