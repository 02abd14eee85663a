"""gateway/shared_fair.py in a gateway on a fake NATS connection: what it publishes on
fed.fair, and what another gateway's batch does here (holds fill a node, charges put a
tenant behind, its own batches and malformed ones are skipped)."""

from __future__ import annotations

import json

import msgspec

from gateway.shared_fair import FairBatch
from tests.gateway.conftest import Gateway, result
from tests.helpers import eventually


def batches(gw: Gateway) -> list[FairBatch]:
    return [msgspec.json.decode(m.data, type=FairBatch) for m in gw.nc.sent("fed.fair")]


def tenant_of(dispatch_data: bytes) -> str:
    return str(json.loads(dispatch_data)["request"].get("tenant_id"))


async def test_publishes_its_holds_charges_and_waiting_tenants(gw: Gateway) -> None:
    await gw.node("n1", capacity=1)
    await gw.ask({"input": "x" * 30, "tenant_id": "a", "params": {"max_tokens": 100}}, "1")
    await gw.ask({"input": "y", "tenant_id": "b"}, "2")  # waits: n1 is full
    assert gw.svc.queued == 1

    def held_and_waiting() -> bool:
        return any(
            b.holds == {"n1": 1} and [w.tenant for w in b.waiting] == ["b"] for b in batches(gw)
        )

    await eventually(held_and_waiting, 5, "a batch with n1 held and b waiting")
    charged = {c.tenant: c.service for b in batches(gw) for c in b.charges if c.service}
    assert charged == {"a": 10 * 1.0 + 100 * 2.0}  # prompt 10 tokens est. + max_tokens x 2
    assert all(b.gateway_id == "gw-test" for b in batches(gw))


async def test_another_gateways_holds_fill_a_node_here(gw: Gateway) -> None:
    await gw.node("n1", capacity=2)
    other = FairBatch(gateway_id="gw-other", holds={"n1": 2})
    await gw.nc.deliver("fed.fair", msgspec.json.encode(other))
    assert gw.svc.catalog.node("n1").local_in_flight == 2  # type: ignore[union-attr]
    await gw.ask({"input": "hi"})
    assert gw.dispatches() == [] and gw.svc.queued == 1  # full with the other's work
    freed = FairBatch(gateway_id="gw-other", holds={"n1": 1})
    await gw.nc.deliver("fed.fair", msgspec.json.encode(freed))
    await eventually(lambda: len(gw.dispatches()) == 1, 5, "the queue tried again")
    assert gw.svc.fair is not None and gw.svc.fair.applied == 2


async def test_a_tenant_heavy_elsewhere_is_behind_here(gw: Gateway) -> None:
    """b and a wait here; another gateway served a 50,000 tokens meanwhile: b's second
    request goes before a's (oldest first would send a's)."""
    await gw.node("n1", capacity=1)
    await gw.ask({"input": "first", "tenant_id": "c"}, "0")  # holds the only slot
    await gw.ask({"input": "b1", "tenant_id": "b"}, "1")
    await gw.ask({"input": "a", "tenant_id": "a"}, "2")
    heavy = {"gateway_id": "gw-other", "charges": [["a", 50_000.0, 50_000.0]]}
    await gw.nc.deliver("fed.fair", msgspec.json.encode(heavy))
    await gw.ask({"input": "b2", "tenant_id": "b"}, "3")
    assert gw.svc.queued == 3
    for n in (2, 3):
        last = gw.dispatches()[-1]
        await gw.answer(last, result(last, "n1"))
        await eventually(lambda n=n: len(gw.dispatches()) == n, 5, f"dispatch {n}")  # type: ignore[misc]
    assert [tenant_of(d.data) for d in gw.dispatches()] == ["c", "b", "b"]


async def test_its_own_batches_and_malformed_ones_are_skipped(gw: Gateway) -> None:
    await gw.node("n1", capacity=2)
    own = FairBatch(gateway_id="gw-test", holds={"n1": 2})
    await gw.nc.deliver("fed.fair", msgspec.json.encode(own))
    await gw.nc.deliver("fed.fair", b"{not json")
    assert gw.svc.catalog.node("n1").local_in_flight == 0  # type: ignore[union-attr]
    assert gw.svc.fair is not None and gw.svc.fair.applied == 0
