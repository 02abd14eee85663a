"""A gateway killed mid-request (SIGKILL): the client's resend through another gateway
is answered once (gateway/idempotency.py).

Real processes on a real nats-server with JetStream: two ``fedgate gateway`` in the
queue group, one slow ``fedgate worker``, and fedgate's client. The gateway holding the
request (its owner in the bucket ``fedgate_requests``) is killed after its dispatch;
the client finds it gone (``Fed-Liveness``: "no responders") and resends with the same
request id; the other gateway finds the claim running and its owner gone ("no
responders" on ``fed.takeover.<owner>``), takes the claim over by compare-and-set,
cancels the orphaned job on the node and runs the request itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.claims import Claim, State, claim_decoder, key_of
from gateway.registry import BUCKET
from shared.client import FedClient
from tests.helpers import Proc, connect, eventually, processes
from worker.backends.synthetic import expected_text

pytestmark = pytest.mark.slow

PROMPT = "killed mid-request"
TOKENS = 8


def worker(url: str) -> Proc:
    """A slow synthetic worker: 0.3 s a token."""
    return Proc(
        "worker", "--nats", url, "--node-id", "w1", "--model", "m", "--capability",
        "generate", "--token-interval-ms", "300", "--heartbeat-interval", "0.2",
    )  # fmt: skip


async def serving(nc: Client, *gateway_ids: str) -> None:
    """Wait until every one of ``gateway_ids`` answers and its catalog holds w1."""
    seen: set[str] = set()

    async def on_view(msg: Msg) -> None:
        view = json.loads(msg.data)
        if any(n["node_id"] == "w1" for n in view["nodes"]):
            seen.add(view["gateway"])

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_view)

    async def ready() -> bool:
        await nc.publish("fed.gateway.nodes", b"", reply=inbox)
        await nc.flush()
        return seen >= set(gateway_ids)

    await eventually(ready, 30, f"{gateway_ids} up, w1 joined")
    await sub.unsubscribe()


async def claim_of(nc: Client, tenant: str, request_id: str) -> Claim | None:
    kv = await nc.jetstream().key_value(BUCKET)
    try:
        entry = await kv.get(key_of(tenant, request_id))
    except Exception:
        return None
    return claim_decoder.decode(entry.value or b"")


async def test_a_gateway_killed_mid_request_the_resend_is_answered_once(js_url: str) -> None:
    nc = await connect(js_url)
    dispatches: list[dict[str, Any]] = []
    cancels: list[dict[str, Any]] = []

    async def on_dispatch(msg: Msg) -> None:
        dispatch = json.loads(msg.data)
        if dispatch.get("request_id") == "K1":  # not a canary
            dispatches.append(dispatch)

    async def on_cancel(msg: Msg) -> None:
        cancels.append(json.loads(msg.data))

    try:
        with processes() as procs:
            gateways = {
                g: Proc("gateway", "--nats", js_url, "--gateway-id", g) for g in ("gw-a", "gw-b")
            }
            procs += gateways.values()
            procs.append(worker(js_url))
            await serving(nc, *gateways)
            await nc.subscribe("fed.node.w1.infer", cb=on_dispatch)
            await nc.subscribe("fed.node.w1.cancel", cb=on_cancel)
            await nc.flush()
            client = FedClient(await connect(js_url), liveness_s=0.2)
            ask = client.infer(
                "generate", PROMPT, request_id="K1", tenant_id="t1", model="m",
                params={"max_tokens": TOKENS},
            )  # fmt: skip
            call = asyncio.create_task(ask)
            await eventually(lambda: len(dispatches) == 1, 10, "the owner dispatched K1")
            first = await claim_of(nc, "t1", "K1")
            assert first is not None and first.state is State.RUNNING
            owner = first.owner
            survivor = next(g for g in gateways if g != owner)
            gateways[owner].kill()  # SIGKILL, mid-request (the node needs ~2.4 s)

            result = await asyncio.wait_for(call, 30)
            assert result.output == expected_text("m", PROMPT, None, TOKENS)
            assert result.served_by == "w1"
            assert len(dispatches) == 2  # the owner's, then the survivor's: no third
            orphan = dispatches[0]["job_id"]
            assert dispatches[1]["job_id"] != orphan
            await eventually(
                lambda: any(c.get("job_id") == orphan for c in cancels), 5, "orphan cancelled"
            )

            async def kept() -> bool:
                claim = await claim_of(nc, "t1", "K1")
                return claim is not None and (claim.owner, claim.state) == (survivor, State.DONE)

            await eventually(kept, 5, f"{survivor} owns K1 and kept its answer")
            await client.close()
            await client.nc.close()
    finally:
        await nc.close()
