"""An approximate index of the prompt prefixes each node holds (issue 14, point 2).
Pure: no I/O, no clock (every call takes ``now``, monotonic seconds).

``PrefixIndex`` records, per node, the keys of the prompts routed to it
(or, exactly, the blocks its engine reports stored and evicted) and answers, for a
request's keys, how many leading blocks each node is believed to hold. Bounded like an
engine's cache: a per-node cap (LRU, deepest blocks of a prompt evicted first, as vLLM
frees a sequence's blocks tail first), a global cap (exact global LRU), and a TTL.

``PrefixMatch``, the answer of ``match``, is in gateway/prefix_match.py, re-exported here.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from gateway.prefix import ObservedPrefix
from gateway.prefix_match import PrefixMatch

__all__ = [
    "DEFAULT_MAX_BLOCKS_PER_NODE",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL_S",
    "PrefixIndex",
    "PrefixMatch",
    "apply_observed",
]

DEFAULT_TTL_S = 120.0
DEFAULT_MAX_ENTRIES = 250_000
DEFAULT_MAX_BLOCKS_PER_NODE = 4096


class PrefixIndex:
    """Which leading blocks each node is believed to hold; approximate, bounded, aged.

    Structures (``E`` = entries, one per (node, key) pair held):

    * ``_nodes``: node id -> ``OrderedDict[key, last_seen_s]`` in least-recently-used
      order (front = next evicted). A routed prompt's keys are inserted deepest first,
      so block 0 is the most recent and the tail goes first, as in an engine.
    * ``_holders``: key -> the node id holding it, or a set of them when several do
      (a single holder, the common case, costs no set: ~180 B per entry in all,
      bench/bench_prefix.py).
    * ``_heap``: ``(time of the node's oldest entry or earlier, node)``, one per node: a
      min-heap that drives the TTL sweep and the global LRU without scanning the nodes
      (O(log nodes) per entry evicted).

    ``match`` drops what the TTL expired (if anything is due), then looks up the
    request's keys from block 0 and stops at the first key no node holds: one dict
    lookup per block, whatever the number of holders; each node's depth is read from
    the answer on demand (``PrefixMatch``). Writes cost O(keys) plus O(log nodes) per
    entry evicted. Times are any monotonic seconds (a time earlier than the latest seen
    counts as the latest, so that entries stay in time order).
    """

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_blocks_per_node: int = DEFAULT_MAX_BLOCKS_PER_NODE,
    ) -> None:
        """``ttl_s``: an entry not recorded again for this long is dropped. Default 120 s:
        an engine under load recycles its KV cache in about capacity / token rate
        (256 K tokens at 2 K tokens/s ~ 2 min), and the index must not promise a hit
        the engine no longer has; sglang-router prunes its approximate tree on the same
        period (``eviction_interval_secs`` 120). ``max_entries``: global cap on (node,
        key) pairs; 250 K ~ 45 MB at ~180 B each, 60 nodes' full caches: size it nodes
        x blocks per node. ``max_blocks_per_node``: the default per-node cap, 4,096
        blocks of 256 B ~ 262 K tokens (an 8B model's KV cache on one 80 GB GPU);
        ``set_node_capacity`` sets one node's."""
        if ttl_s <= 0 or max_entries < 1 or max_blocks_per_node < 1:
            raise ValueError("ttl_s, max_entries and max_blocks_per_node must be positive")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_blocks_per_node = max_blocks_per_node
        self._nodes: dict[str, OrderedDict[int, float]] = {}
        self._holders: dict[int, str | set[str]] = {}
        self._caps: dict[str, int] = {}
        self._heap: list[tuple[float, str]] = []
        self._in_heap: set[str] = set()
        self._entries = 0
        self._now = float("-inf")

    def __len__(self) -> int:
        """Entries held: (node, key) pairs."""
        return self._entries

    @property
    def nodes(self) -> list[str]:
        """The nodes with at least one entry."""
        return [n for n, od in self._nodes.items() if od]

    def node_entries(self, node_id: str) -> int:
        """How many keys ``node_id`` is believed to hold."""
        od = self._nodes.get(node_id)
        return len(od) if od else 0

    def set_node_capacity(self, node_id: str, blocks: int | None) -> None:
        """Cap ``node_id`` at ``blocks`` entries (its engine's KV capacity in blocks of
        ``block_bytes``), or back to the default with None. Applied at its next record."""
        if blocks is None:
            self._caps.pop(node_id, None)
        else:
            self._caps[node_id] = max(1, blocks)

    # -- writes -------------------------------------------------------------------

    def record(self, node_id: str, block_hashes: Sequence[int], now: float) -> None:
        """``node_id`` served a prompt with these keys (block 0 first) at ``now``: it is
        now believed to hold all of them, block 0 most recently."""
        self._store(node_id, block_hashes, now)

    def record_blocks(self, node_id: str, block_hashes: Sequence[int], now: float) -> None:
        """Exact event: ``node_id``'s engine stored these blocks (a KV event stream's
        BlockStored, parents first). The keys must be in the same space as the ones
        ``match`` is asked about (e.g. a worker that knows the request's byte blocks
        reports which of them its engine now holds); same structures as ``record``."""
        self._store(node_id, block_hashes, now)

    def evict_blocks(self, node_id: str, block_hashes: Iterable[int]) -> None:
        """Exact event: ``node_id``'s engine evicted these blocks (BlockRemoved)."""
        od = self._nodes.get(node_id)
        if not od:
            return
        for h in block_hashes:
            if od.pop(h, None) is not None:
                self._unhold(h, node_id)
                self._entries -= 1

    def remove_node(self, node_id: str) -> None:
        """Forget ``node_id`` (it left, restarted, or lost its cache)."""
        od = self._nodes.pop(node_id, None)
        self._caps.pop(node_id, None)
        if od:
            for h in od:
                self._unhold(h, node_id)
            self._entries -= len(od)

    def expire(self, now: float) -> int:
        """Drop the entries not recorded in the last ``ttl_s`` seconds; how many."""
        cutoff = self._tick(now) - self.ttl_s
        heap, nodes, dropped = self._heap, self._nodes, 0
        while heap and heap[0][0] < cutoff:
            node_id = heap[0][1]
            od = nodes.get(node_id)
            while od:
                h, t = od.popitem(last=False)
                if t >= cutoff:
                    od[h] = t
                    od.move_to_end(h, last=False)
                    break
                self._unhold(h, node_id)
                dropped += 1
            if od:
                heapq.heapreplace(heap, (od[next(iter(od))], node_id))
            else:
                self._drop_node(node_id)
        self._entries -= dropped
        return dropped

    def _tick(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    def _drop_node(self, node_id: str) -> None:
        """Pop the heap's top, ``node_id``, which holds nothing any more."""
        heapq.heappop(self._heap)
        self._in_heap.discard(node_id)
        if not self._nodes.get(node_id, True):
            del self._nodes[node_id]

    def _store(self, node_id: str, keys: Sequence[int], now: float) -> None:
        now = self._tick(now)
        self.expire(now)
        if not keys:
            return
        cap = self._caps.get(node_id, self.max_blocks_per_node)
        if len(keys) > cap:
            keys = keys[:cap]  # the deepest would be evicted at once
        od = self._nodes.get(node_id)
        if od is None:
            od = self._nodes[node_id] = OrderedDict()
        holders, added = self._holders, 0
        move = od.move_to_end
        for h in reversed(keys):
            if h in od:
                move(h)
                od[h] = now
                continue
            od[h] = now
            added += 1
            cur = holders.get(h)
            if cur is None:
                holders[h] = node_id
            elif isinstance(cur, str):
                if cur != node_id:
                    holders[h] = {cur, node_id}
            else:
                cur.add(node_id)
        self._entries += added
        while len(od) > cap:
            self._unhold(od.popitem(last=False)[0], node_id)
            self._entries -= 1
        if node_id not in self._in_heap:
            self._in_heap.add(node_id)
            heapq.heappush(self._heap, (od[next(iter(od))], node_id))
        if self._entries > self.max_entries:
            self._evict_global()

    def _evict_global(self) -> None:
        """Evict the globally least recently recorded entries down to ``max_entries``.
        A node's heap key is at most the time of its oldest entry (that only grows), so
        when the top's key is its node's oldest time, that entry is a globally oldest."""
        heap, nodes = self._heap, self._nodes
        while self._entries > self.max_entries and heap:
            t0, node_id = heap[0]
            od = nodes.get(node_id)
            if not od:
                self._drop_node(node_id)
                continue
            oldest = od[next(iter(od))]
            if oldest > t0:
                heapq.heapreplace(heap, (oldest, node_id))
                continue
            self._unhold(od.popitem(last=False)[0], node_id)
            self._entries -= 1
            if not od:
                self._drop_node(node_id)

    def _unhold(self, h: int, node_id: str) -> None:
        holders = self._holders
        cur = holders.get(h)
        if cur is None:
            return
        if isinstance(cur, str):
            if cur == node_id:
                del holders[h]
            return
        cur.discard(node_id)
        if len(cur) == 1:
            holders[h] = next(iter(cur))
        elif not cur:
            del holders[h]

    # -- reads ----------------------------------------------------------------------

    def match(self, block_hashes: Sequence[int], now: float) -> PrefixMatch:
        """Node id -> how many leading blocks of ``block_hashes`` (block 0 first) it is
        believed to hold at ``now``, for every node holding at least block 0: a lazy
        ``PrefixMatch``. Costs one dict lookup per block up to the first block no node
        holds, whatever the number of holders; reading it costs what is read."""
        heap = self._heap
        if heap and heap[0][0] < max(now, self._now) - self.ttl_s:  # else nothing to expire
            self.expire(now)
        holders = self._holders
        levels: list[tuple[str] | set[str]] = []
        ends: list[int] = []
        last: str | None = None
        depth = 0
        for h in block_hashes:
            cur = holders.get(h)
            if cur is None:
                break
            depth += 1
            if isinstance(cur, str):
                if cur == last:  # one run of blocks with the same single holder
                    ends[-1] = depth
                    continue
                last = cur
                levels.append((cur,))
            else:
                last = None
                levels.append(cur)
            ends.append(depth)
        return PrefixMatch(levels, ends, len(block_hashes))

    def match_nodes(
        self, block_hashes: Sequence[int], node_ids: Iterable[str], now: float
    ) -> dict[str, int]:
        """``match`` restricted to ``node_ids`` (e.g. the router's candidates), every one
        of them in the answer (0 when it holds no block): O(candidates x depth)."""
        self.expire(now)
        out: dict[str, int] = {}
        n = len(block_hashes)
        for node_id in node_ids:
            od = self._nodes.get(node_id)
            depth = 0
            if od:
                while depth < n and block_hashes[depth] in od:
                    depth += 1
            out[node_id] = depth
        return out


def apply_observed(index: PrefixIndex, event: ObservedPrefix, now: float, wall_now: float) -> bool:
    """Record ``event`` in ``index`` at ``now`` (the index's monotonic clock; the index
    keeps its entries in time order, so an event is recorded when it arrives, not when it
    was sent). An event whose age ``wall_now - at_s`` (receiver's wall clock) exceeds the
    TTL is dropped (False): a replay, or a clock far off."""
    if wall_now - event.at_s >= index.ttl_s:
        return False
    index.record(event.node_id, event.blocks, now)
    return True
