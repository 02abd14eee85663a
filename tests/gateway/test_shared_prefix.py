"""gateway/shared_prefix.py over a fake NATS: what is published on fed.prefix.<node>,
what is applied from other gateways, and what is dropped."""

from __future__ import annotations

import time
from typing import Any

from gateway.catalog import ModelCatalog
from gateway.clock import FakeClock
from gateway.prefix import ObservedPrefix, decode_observed, encode_observed
from gateway.prefix_index import PrefixIndex
from gateway.shared_prefix import SharedPrefixes
from shared.subjects import Subjects
from tests.core.util import hb
from tests.helpers import FakeNats


def shared(nc: FakeNats, gid: str = "gw-a") -> SharedPrefixes:
    catalog = ModelCatalog()
    catalog.apply_heartbeat("n1", hb())

    def spawn(coro: Any, name: str) -> None:
        coro.close()

    return SharedPrefixes(
        nc,
        Subjects(),
        gid,
        PrefixIndex(),
        catalog,
        spawn,
        FakeClock(),  # type: ignore[arg-type]
    )


async def test_publishes_each_routed_prompt_once_on_its_node_subject() -> None:
    nc = FakeNats()
    sp = shared(nc)
    sp.record("n1", [1, 2, 3])
    sp.record("n1", [1, 2, 3])  # the same prompt again in the batch: sent once
    sp.record("n2", [1, 2])
    await sp.flush()
    assert [m.subject for m in nc.published] == ["fed.prefix.n1", "fed.prefix.n2"]
    event = decode_observed(nc.published[0].data)
    assert event.blocks == [1, 2, 3] and event.origin == "gw-a" and event.node_id == "n1"


async def test_applies_others_skips_own_unknown_stale_and_malformed() -> None:
    nc = FakeNats()
    sp = shared(nc)
    await sp.subscribe()
    now = time.time()

    def event(node: str = "n1", origin: str = "gw-b", at_s: float = now) -> bytes:
        return encode_observed(
            ObservedPrefix(node_id=node, blocks=[7, 8], at_s=at_s, origin=origin)
        )

    await nc.deliver("fed.prefix.n1", event(origin="gw-a"))  # its own
    await nc.deliver("fed.prefix.n9", event(node="n9"))  # a node it does not know
    await nc.deliver("fed.prefix.n1", event(at_s=now - 1000))  # older than the TTL
    await nc.deliver("fed.prefix.n2", event())  # the subject names another node
    await nc.deliver("fed.prefix.n1", b"\xc1 not msgpack")
    assert sp.applied == 0 and len(sp.index) == 0
    await nc.deliver("fed.prefix.n1", event())
    assert sp.applied == 1 and sp.index.node_entries("n1") == 2
