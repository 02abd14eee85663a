"""Nodes inside their ``Retry-After``: a busy node's own word on when to come back.

A node that answers ``429 overloaded`` gets no dispatch from this gateway until its
``Retry-After`` passes (``DEFAULT_BUSY_S`` when it sent none, at most an hour). Times are
arguments: no clock here.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_BUSY_S = 0.05
"""How long a node that answered ``429`` without ``Retry-After`` is left alone."""

MAX_BUSY_S = 3600.0
"""The longest Retry-After honoured."""


def busy_seconds(retry_after: str) -> float:
    """A node's ``Retry-After`` header in seconds (``DEFAULT_BUSY_S`` when absent or bad)."""
    if retry_after.replace(".", "", 1).isdigit():
        return min(float(retry_after), MAX_BUSY_S)
    return DEFAULT_BUSY_S


class Cooldowns(dict[str, float]):
    """Node -> the time before which it is sent no work (a dict: empty is falsy for free)."""

    __slots__ = ()

    def hold(self, node_id: str, until: float) -> None:
        """Send ``node_id`` nothing before ``until``."""
        self[node_id] = until

    def until(self, node_id: str, default: float = 0.0) -> float:
        """When ``node_id`` may be sent work again (even if that has passed)."""
        return self.get(node_id, default)

    def exclude(self, tried: Iterable[str], now: float) -> set[str]:
        """``tried`` plus the nodes still inside their Retry-After (expired ones pruned)."""
        out = set(tried)
        for node_id, until in list(self.items()):
            if until > now:
                out.add(node_id)
            else:
                del self[node_id]
        return out

    def cooling(self, nodes: Iterable[str], now: float) -> list[str]:
        """Those of ``nodes`` still inside their Retry-After, in order."""
        return [n for n in nodes if self.get(n, 0.0) > now]
