"""The front door's in-process client: requests straight into the engine, no NATS hop
into the gateway itself; only the dispatch and the node's replies travel on NATS."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.local import LocalClient
from shared import errors
from tests.gateway.conftest import Gateway, chunk, result
from tests.helpers import eventually


@pytest.fixture
def client(gw: Gateway) -> LocalClient:
    return LocalClient(gw.svc.engine, gw.svc.subjects)


async def test_a_request_reaches_the_node_without_crossing_nats_first(
    gw: Gateway, client: LocalClient
) -> None:
    await gw.node("n1")
    call = asyncio.create_task(
        client.infer("generate", "hi", request_id="mine-1", tenant_id="acme",
                     headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    )  # fmt: skip
    await eventually(lambda: bool(gw.dispatches()), 5, "dispatched")
    (dispatch,) = gw.dispatches()
    sent = json.loads(dispatch.data)
    assert sent["request_id"] == "mine-1" and sent["request"]["tenant_id"] == "acme"
    assert dispatch.headers and dispatch.headers["traceparent"].startswith("00-111")
    await gw.answer(dispatch, result(dispatch, "n1", "hello"), **{"Fed-Tokens": "3"})
    answer = await call
    assert (answer.output, answer.served_by, answer.attempts) == ("hello", "n1", 1)
    assert gw.nc.sent("infer.>") == [] and gw.nc.sent("_INBOX.caller.>") == []


async def test_a_stream_and_its_figures(gw: Gateway, client: LocalClient) -> None:
    await gw.node("n1")

    async def read() -> tuple[list[str], int, str]:
        async with client.stream("generate", "hi", request_id="s-1") as stream:
            texts = [c.text async for c in stream]
        return texts, stream.tokens, stream.served_by

    call = asyncio.create_task(read())
    await eventually(lambda: bool(gw.dispatches()), 5, "dispatched")
    dispatch = gw.dispatches()[0]
    await gw.answer(dispatch, chunk(1, "a "))
    await gw.answer(dispatch, chunk(2, "b"))
    await gw.answer(dispatch, **{"Fed-Status": "ok", "Fed-Tokens": "2"})
    assert await call == (["a ", "b"], 2, "n1")


async def test_a_consumer_that_goes_away_cancels_on_the_node_at_once(
    gw: Gateway, client: LocalClient
) -> None:
    await gw.node("n1")
    call = asyncio.create_task(client.infer("generate", "hi", request_id="c-1"))
    await eventually(lambda: bool(gw.dispatches()), 5, "dispatched")
    call.cancel()  # the HTTP client disconnected: its handler is cancelled
    with pytest.raises(asyncio.CancelledError):
        await call
    (cancel,) = gw.nc.sent("fed.node.n1.cancel")
    assert json.loads(cancel.data)["request_id"] == "c-1"
    assert gw.svc.in_flight == 0


async def test_identity_is_scoped_to_the_tenant(gw: Gateway, client: LocalClient) -> None:
    await gw.node("n1")
    first = asyncio.create_task(client.infer("generate", "a", request_id="x", tenant_id="t1"))
    other = asyncio.create_task(client.infer("generate", "b", request_id="x", tenant_id="t2"))
    await eventually(lambda: len(gw.dispatches()) == 2, 5, "both dispatched")
    with pytest.raises(errors.Duplicate):
        await client.infer("generate", "c", request_id="x", tenant_id="t1")
    for dispatch in gw.dispatches():
        await gw.answer(dispatch, result(dispatch, "n1"))
    assert (await first).served_by == (await other).served_by == "n1"


async def test_errors_come_back_typed(gw: Gateway, client: LocalClient) -> None:
    with pytest.raises(errors.NoCapacity):
        await client.infer("generate", "hi")
    with pytest.raises(errors.BadRequest):
        async with client.stream("embed", "hi") as stream:
            async for _ in stream:
                pass


async def test_the_same_body_again_takes_the_request_over(gw: Gateway, client: LocalClient) -> None:
    """A client retrying a request whose connection it lost: the earlier caller gets 409."""
    await gw.node("n1")
    first = asyncio.create_task(client.infer("generate", "a", request_id="r", tenant_id="t"))
    await eventually(lambda: bool(gw.dispatches()), 5, "dispatched")
    again = asyncio.create_task(client.infer("generate", "a", request_id="r", tenant_id="t"))
    with pytest.raises(errors.Duplicate):
        await first
    dispatch = gw.dispatches()[0]
    await gw.answer(dispatch, result(dispatch, "n1", "once"))
    assert (await again).output == "once"
    assert len(gw.dispatches()) == 1 and not gw.nc.sent("fed.node.n1.cancel")
