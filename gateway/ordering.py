"""The router's incremental index: one ``Ordering`` per (capability, model, variant key).

An ordering holds its nodes sorted by base score (the request-independent part of their
composite score), best first, once globally and once per region, plus the nodes a
spreading strategy explores (health UNKNOWN, or too few samples: the ``unknown`` flag).
A node that moves within its region costs, per list, two searches and a shift of the
entries between its old and new places (a health report moves it a few places: no
memmove of a list's tail);
a new node or a region change, a deletion and an insertion per list. Nothing is ever
re-sorted.

The searches start where the node was last placed (``at``, a hint that other nodes'
moves shift by a few places) and gallop outwards: a handful of entries next to each
other, not a ``bisect`` of the whole list, whose dozen entries (a tuple and a float
each) are scattered in memory and cold when a health report comes.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable

from gateway.catalog import NodeInfo
from shared.messages import InferRequest

Entry = tuple[float, int, NodeInfo]
"""(-base, seq, node): ascending order is best first, ties by catalog order."""


class Bag:
    """An unordered set of nodes with O(1) add and remove; ``items`` for random picks."""

    __slots__ = ("_at", "items")

    def __init__(self) -> None:
        self.items: list[NodeInfo] = []
        self._at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, node: NodeInfo) -> None:
        """Insert or replace ``node``."""
        i = self._at.get(node.node_id)
        if i is None:
            self._at[node.node_id] = len(self.items)
            self.items.append(node)
        else:
            self.items[i] = node

    def discard(self, node_id: str) -> None:
        """Remove the node if present (swap with the last item)."""
        i = self._at.pop(node_id, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._at[last.node_id] = i


class Ordering:
    """Nodes of one (capability, model, variant) sorted by base score, also per region."""

    __slots__ = (
        "at",
        "by_region",
        "capability",
        "entries",
        "keys",
        "layout",
        "model",
        "template",
        "unknown",
        "unknown_by_region",
        "variant",
    )

    def __init__(
        self,
        capability: str,
        model: str | None,
        template: InferRequest,
        variant: tuple[Hashable, ...] = (),
    ) -> None:
        self.capability = capability
        self.model = model
        self.template = template
        """The request that created it: its variant key is every member's."""
        self.variant = variant
        """That key (a node's base score depends on nothing else of the request)."""
        self.entries: list[Entry] = []
        self.by_region: dict[str, list[Entry]] = {}
        self.keys: dict[str, tuple[Entry, str, bool]] = {}
        """node id -> (its entry, its region, whether it is in ``unknown``)."""
        self.at: dict[str, list[int]] = {}
        """node id -> [its index in ``entries``, in its region's list] when last placed
        (where a move starts looking; other nodes' moves and insertions shift it)."""
        self.unknown = Bag()
        self.unknown_by_region: dict[str, Bag] = {}
        self.layout = 0
        """Counts the regions' lists and bags created or dropped (what a cached view of
        this ordering depends on)."""

    def matches(self, node: NodeInfo) -> bool:
        """True if the node belongs here (serves the capability, and the model if set)."""
        if self.model is None:
            return self.capability in node.capabilities
        return self.capability in node.models.get(self.model, ())

    def same(self, node: NodeInfo, base: float, unknown: bool) -> bool:
        """True if ``put(node, base, unknown)`` would change nothing."""
        old = self.keys.get(node.node_id)
        return old is not None and old[0][0] == -base and old[0][2] is node and old[2] is unknown

    def remove(self, node_id: str) -> None:
        """Take the node out (unknown ids are fine)."""
        old = self.keys.pop(node_id, None)
        if old is None:
            return
        del self.at[node_id]
        entry, region, unknown = old
        del self.entries[bisect.bisect_left(self.entries, entry)]
        bucket = self.by_region[region]
        del bucket[bisect.bisect_left(bucket, entry)]
        if not bucket:
            del self.by_region[region]
            self.layout += 1
        if unknown:
            self.unknown.discard(node_id)
            bag = self.unknown_by_region[region]
            bag.discard(node_id)
            if not len(bag):
                del self.unknown_by_region[region]
                self.layout += 1

    def put(self, node: NodeInfo, base: float, unknown: bool) -> None:
        """Insert the node, or move it to its new place (in its region: by shifting the
        entries between its old and new places, not the lists' tails)."""
        nid, region = node.node_id, node.region
        old = self.keys.get(nid)
        entry = (-base, node.seq, node)
        if old is None or old[1] != region or old[0][1] != node.seq:
            self.remove(nid)
            self._insert(entry, region)
        else:
            if old[2] is unknown and old[0][2] is node and old[0][0] == entry[0]:
                return  # nothing changes (``same``)
            at = self.at[nid]
            at[0] = _move(self.entries, old[0], entry, at[0])
            at[1] = _move(self.by_region[region], old[0], entry, at[1])
            if old[2] and not unknown:
                self.unknown.discard(nid)
                gone = self.unknown_by_region[region]
                gone.discard(nid)
                if not len(gone):
                    del self.unknown_by_region[region]
                    self.layout += 1
        self.keys[nid] = (entry, region, unknown)
        if unknown:
            self.unknown.add(node)
            bag = self.unknown_by_region.get(region)
            if bag is None:
                bag = self.unknown_by_region[region] = Bag()
                self.layout += 1
            bag.add(node)

    def _insert(self, entry: Entry, region: str) -> None:
        i = bisect.bisect_right(self.entries, entry)
        self.entries.insert(i, entry)
        bucket = self.by_region.get(region)
        if bucket is None:
            bucket = self.by_region[region] = []
            self.layout += 1
        j = bisect.bisect_right(bucket, entry)
        bucket.insert(j, entry)
        self.at[entry[2].node_id] = [i, j]

    def fill(self, items: list[tuple[NodeInfo, float, bool]]) -> None:
        """Bulk-load an empty ordering (one sort instead of n insertions)."""
        entries: list[Entry] = []
        for node, base, unknown in items:
            entry = (-base, node.seq, node)
            self.keys[node.node_id] = (entry, node.region, unknown)
            entries.append(entry)
            if unknown:
                self.unknown.add(node)
                self.unknown_by_region.setdefault(node.region, Bag()).add(node)
        entries.sort()
        self.entries = entries
        for i, entry in enumerate(entries):
            bucket = self.by_region.setdefault(entry[2].region, [])
            self.at[entry[2].node_id] = [i, len(bucket)]
            bucket.append(entry)


def _move(entries: list[Entry], old: Entry, new: Entry, hint: int) -> int:
    """Replace ``old`` (in ``entries``, looked for from ``hint``) with ``new`` (same node,
    same seq) where it sorts, and return that index: compares next to the two places
    (seqs are unique: no node is compared) and a shift of the entries between them."""
    i = _locate(entries, old, hint)
    key, seq = new[0], new[1]
    if key == old[0]:  # same place
        entries[i] = new
        return i
    if key < old[0]:  # towards the head
        j = _left(entries, (key, seq), i)
        entries[j + 1 : i + 1] = entries[j:i]
        entries[j] = new
        return j
    j = _right(entries, (key, seq), i + 1)
    entries[i : j - 1] = entries[i + 1 : j]
    entries[j - 1] = new
    return j - 1


def _locate(entries: list[Entry], entry: Entry, hint: int) -> int:
    """The index of ``entry`` (in ``entries``), looked for from ``hint`` outwards."""
    last = len(entries) - 1
    if hint > last:
        hint = last
    here = entries[hint]
    if here is entry:
        return hint
    if here < entry:
        return _right(entries, entry, hint + 1)
    return _left(entries, entry, hint)


def _left(entries: list[Entry], x: tuple[float, int] | Entry, hi: int) -> int:
    """``bisect_left(entries, x, 0, hi)``, galloping down from ``hi``."""
    step = 1
    while True:
        lo = hi - step
        if lo <= 0:
            return bisect.bisect_left(entries, x, 0, hi)
        if entries[lo] < x:
            return bisect.bisect_left(entries, x, lo + 1, hi)
        hi = lo  # x sorts at or before lo
        step += step


def _right(entries: list[Entry], x: tuple[float, int] | Entry, lo: int) -> int:
    """``bisect_left(entries, x, lo)``, galloping up from ``lo``."""
    n, step = len(entries), 1
    while True:
        probe = lo + step - 1
        if probe >= n:
            return bisect.bisect_left(entries, x, lo, n)
        if not entries[probe] < x:  # x sorts at or before probe
            return bisect.bisect_left(entries, x, lo, probe)
        lo = probe + 1
        step += step
