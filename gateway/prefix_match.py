"""What ``PrefixIndex.match`` answers (gateway/prefix_index.py): ``PrefixMatch``, a lazy,
read-only mapping node id -> leading blocks of a request's prompt that node is believed
to hold. Pure: it reads the index's holder sets, computes each depth on demand.
``gateway.prefix_index`` re-exports it.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView


class PrefixMatch(Mapping[str, int]):
    """What ``PrefixIndex.match`` found: a read-only mapping node id -> leading blocks
    held (>= 1), computed on demand from the holders of each block, block 0 first, up
    to the first block nobody holds ("levels"; consecutive blocks with the same single
    holder make one level, ``ends`` the depth at the end of each). It reads the index's
    own holder sets: use it before the next write to the index (the router's use:
    match, then score the candidates at once).

    ``depth(node)`` costs O(levels) set lookups (a 4 KB prompt on a shared system
    prompt: ~5 levels); iterating, ``len`` or ``==`` build the whole dict once, O(levels
    x holders) in C set operations (a system prompt that every one of 1,000 nodes holds
    makes a 1,000-entry answer)."""

    __slots__ = ("_ends", "_full", "_levels", "blocks")

    def __init__(self, levels: list[tuple[str] | set[str]], ends: list[int], blocks: int) -> None:
        self._levels = levels
        self._ends = ends
        self.blocks = blocks
        """How many blocks the request has (the denominator of ``fraction``)."""
        self._full: dict[str, int] | None = None

    def depth(self, node_id: str) -> int:
        """Leading blocks ``node_id`` holds, 0 when none."""
        d, ends = 0, self._ends
        for i, level in enumerate(self._levels):
            if node_id not in level:
                return d
            d = ends[i]
        return d

    def fraction(self, node_id: str) -> float:
        """``depth / blocks``, 0..1: the matched fraction the cost model takes."""
        return self.depth(node_id) / self.blocks if self.blocks else 0.0

    def fractions(self, node_ids: Iterable[str]) -> list[float]:
        """``fraction`` of each of ``node_ids``, in order (the router's candidates)."""
        if not self.blocks:
            return [0.0 for _ in node_ids]
        levels, ends, total = self._levels, self._ends, self.blocks
        out: list[float] = []
        for node_id in node_ids:
            d = 0
            for i, level in enumerate(levels):
                if node_id not in level:
                    break
                d = ends[i]
            out.append(d / total)
        return out

    def deepest(self) -> tuple[int, list[str]]:
        """The longest prefix any node holds, in blocks, and the nodes holding that
        many; ``(0, [])`` when no node holds block 0."""
        for i in range(len(self._levels) - 1, -1, -1):
            d = self._ends[i]
            best = [n for n in self._levels[i] if self.depth(n) >= d]
            if best:
                return d, best
        return 0, []

    def __getitem__(self, node_id: str) -> int:
        d = self.depth(node_id)
        if not d:
            raise KeyError(node_id)
        return d

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and self.depth(node_id) > 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._materialize())

    def __len__(self) -> int:
        return len(self._materialize())

    def as_dict(self) -> dict[str, int]:
        """The whole answer, a new dict (``dict(match)`` gives the same, slower: it reads
        node by node)."""
        return dict(self._materialize())

    def items(self) -> ItemsView[str, int]:
        return self._materialize().items()

    def keys(self) -> KeysView[str]:
        return self._materialize().keys()

    def values(self) -> ValuesView[int]:
        return self._materialize().values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PrefixMatch):
            other = other._materialize()
        return self._materialize() == other

    def __repr__(self) -> str:
        return f"PrefixMatch({self._materialize()!r}, blocks={self.blocks})"

    def _materialize(self) -> dict[str, int]:
        """Every holder's depth: walk the levels keeping the nodes that held every one
        so far (a subset test first: the levels of a recorded chain are nested)."""
        if self._full is None:
            out: dict[str, int] = {}
            live: set[str] = set()
            start = 0
            for i, level in enumerate(self._levels):
                cur = set(level) if isinstance(level, tuple) else level
                if not i:
                    live = cur  # never mutated: the operators below make new sets
                elif not (len(cur) >= len(live) and live <= cur):
                    inter = live & cur
                    out.update(dict.fromkeys(live - inter, start))
                    live = inter
                    if not live:
                        break
                start = self._ends[i]
            out.update(dict.fromkeys(live, start))
            self._full = out
        return self._full
