"""The incremental ordering stays what a full sort would give, whatever moves it sees."""

from __future__ import annotations

import random

from gateway.catalog import NodeInfo
from gateway.ordering import Ordering
from tests.core.util import req


def test_moves_keep_every_list_sorted_and_complete() -> None:
    rng = random.Random(5)
    o = Ordering("generate", None, req())
    nodes = {f"n{i}": NodeInfo(node_id=f"n{i}", region=f"r{i % 3}", seq=i + 1) for i in range(60)}
    state: dict[str, tuple[float, bool]] = {}
    for step in range(3000):
        nid = rng.choice(list(nodes))
        kind = rng.random()
        if kind < 0.1:
            o.remove(nid)
            state.pop(nid, None)
            continue
        node = nodes[nid]
        if kind < 0.15:  # a new NodeInfo for the same node (a heartbeat), maybe another region
            node = nodes[nid] = NodeInfo(
                node_id=nid, region=rng.choice(["r0", "r1", "r2"]), seq=node.seq
            )
        old = state.get(nid, (rng.random(), False))[0]
        base = rng.choice([old, old + rng.uniform(-0.01, 0.01), rng.random(), 0.5])
        unknown = rng.random() < 0.3
        o.put(node, base, unknown)
        state[nid] = (base, unknown)
        if step % 97:
            continue
        want = sorted((-b, nodes[n].seq, nodes[n]) for n, (b, _) in state.items())
        assert o.entries == want
        for region, entries in o.by_region.items():
            assert entries == [e for e in want if e[2].region == region]
        assert set(o.by_region) == {e[2].region for e in want}
        unknown_ids = {n for n, (_, u) in state.items() if u}
        assert {x.node_id for x in o.unknown.items} == unknown_ids
        for region, bag in o.unknown_by_region.items():
            assert {x.node_id for x in bag.items} == {
                n for n in unknown_ids if nodes[n].region == region
            }
        assert all(len(bag) for bag in o.unknown_by_region.values())
