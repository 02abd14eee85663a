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


def _check(o: Ordering, nodes: dict[str, NodeInfo], state: dict[str, tuple[float, bool]]) -> None:
    want = sorted((-b, nodes[n].seq, nodes[n]) for n, (b, _) in state.items())
    assert o.entries == want
    assert all(a[2] is b[2] for a, b in zip(o.entries, want, strict=True))  # current NodeInfo
    for region, entries in o.by_region.items():
        assert entries == [e for e in want if e[2].region == region]
    assert set(o.by_region) == {e[2].region for e in want}
    assert {n: (e, r, u) for n, (e, r, u) in o.keys.items()} == {
        n: ((-b, nodes[n].seq, nodes[n]), nodes[n].region, u) for n, (b, u) in state.items()
    }
    unknown_ids = {n for n, (_, u) in state.items() if u}
    assert sorted(x.node_id for x in o.unknown.items) == sorted(unknown_ids)
    assert all(o.unknown.items[o.unknown._at[x.node_id]] is x for x in o.unknown.items)
    for region, bag in o.unknown_by_region.items():
        assert sorted(x.node_id for x in bag.items) == sorted(
            n for n in unknown_ids if nodes[n].region == region
        )
    assert all(len(bag) for bag in o.unknown_by_region.values())


def test_small_moves_and_ties_keep_the_lists_a_filtered_full_sort_at_every_step() -> None:
    """Health reports move a node a few places (the shift path of ``put``), often onto a
    tie; checked after every operation, with the lists' identity: while ``layout`` holds,
    a cached view's lists and bags are still the ordering's own."""
    rng = random.Random(11)
    o = Ordering("generate", None, req())
    regions = ["r0", "r1", "r2", "r3"]
    nodes = {
        f"n{i}": NodeInfo(node_id=f"n{i}", region=rng.choice(regions), seq=i + 1) for i in range(40)
    }
    state: dict[str, tuple[float, bool]] = {}
    levels = [round(0.1 * k, 1) for k in range(8)]  # few distinct bases: many ties
    for _ in range(4000):
        layout = o.layout
        lists = dict(o.by_region)
        bags = dict(o.unknown_by_region)
        nid = rng.choice(list(nodes))
        kind = rng.random()
        node = nodes[nid]
        if kind < 0.05:
            o.remove(nid)
            state.pop(nid, None)
        else:
            if kind < 0.1:  # a region change
                node.region = rng.choice(regions)
            elif kind < 0.15:  # a new NodeInfo, same seq
                node = nodes[nid] = NodeInfo(node_id=nid, region=node.region, seq=node.seq)
            old = state.get(nid, (rng.choice(levels), False))[0]
            i = levels.index(old) if old in levels else 0
            base = rng.choice([old, levels[max(0, i - 1)], levels[min(7, i + 1)], *levels[:2]])
            unknown = rng.random() < 0.2 if nid not in state else state[nid][1] ^ (kind > 0.9)
            o.put(node, base, unknown)
            state[nid] = (base, unknown)
        _check(o, nodes, state)
        if o.layout == layout:
            assert o.by_region.keys() == lists.keys()
            assert all(o.by_region[r] is lst for r, lst in lists.items())
            assert o.unknown_by_region.keys() == bags.keys()
            assert all(o.unknown_by_region[r] is bag for r, bag in bags.items())
