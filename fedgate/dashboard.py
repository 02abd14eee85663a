"""What ``fedgate top`` shows: the gateways' answers, and its panels as rich renderables.

No I/O and no gateway code: ``Dashboard`` holds what the inspection subjects answered
(``fed.gateway.nodes``/``stats``) and the routing decisions seen on ``fed.decisions``;
``panel()`` draws one tab as a rich table (with the functions of ``fedgate.panels``,
re-exported here), which the textual app (``fedgate.top``) shows in its tab and
``frame()`` prints for ``top --once``. Tabs, titles and empty-state texts follow the
reference dashboard.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from fedgate.panels import (
    MAX_ROUTING_ROWS,
    POLICY_DESCRIPTIONS,
    catalog_panel,
    circuits_panel,
    grid,
    health_panel,
    help_panel,
    policies_panel,
    routing_panel,
    stats_panel,
    truncate,
)

__all__ = [
    "MAX_HISTORY",
    "MAX_ROUTING_ROWS",
    "POLICY_DESCRIPTIONS",
    "VERSION",
    "Dashboard",
    "Tab",
    "catalog_panel",
    "circuits_panel",
    "grid",
    "health_panel",
    "help_panel",
    "policies_panel",
    "routing_panel",
    "stats_panel",
    "truncate",
]

VERSION = "v1.0"
MAX_HISTORY = 100
"""Routing decisions kept (oldest dropped first)."""


class Tab(enum.IntEnum):
    """The dashboard tabs, in key order (keys 1-6, ``?`` for help)."""

    CATALOG = 0
    HEALTH = 1
    ROUTING = 2
    CIRCUITS = 3
    STATS = 4
    POLICIES = 5
    HELP = 6

    @property
    def title(self) -> str:
        """The tab bar label (``Catalog [1]`` ... ``Help [?]``)."""
        return f"{self.name.capitalize()} [{self.key}]"

    @property
    def key(self) -> str:
        """The key that shows this tab."""
        return "?" if self is Tab.HELP else str(self.value + 1)

    @classmethod
    def from_index(cls, i: int) -> Tab:
        """0..5 in order; anything else is Help (as the reference)."""
        return cls(i) if 0 <= i < 6 else cls.HELP


_WORST_FIRST = ("unhealthy", "degraded", "unknown", "healthy")


def _rank(health: str) -> int:
    return _WORST_FIRST.index(health) if health in _WORST_FIRST else len(_WORST_FIRST)


@dataclass(slots=True)
class Dashboard:
    """What the dashboard shows: the last answers of every gateway, recent decisions."""

    nodes_replies: list[dict[str, Any]] = field(default_factory=list)
    stats_replies: list[dict[str, Any]] = field(default_factory=list)
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    rate_per_s: float = 0.0
    status: str = ""
    _last_total: tuple[float, int] | None = None

    # -- input -----------------------------------------------------------------------

    def update(self, nodes: list[dict[str, Any]], stats: list[dict[str, Any]], now: float) -> None:
        """New answers from the gateways; the request rate is measured between updates."""
        self.nodes_replies = [r for r in nodes if "nodes" in r]
        self.stats_replies = [r for r in stats if "total_requests" in r]
        total = sum(int(s["total_requests"]) for s in self.stats_replies)
        if self._last_total is not None and now > self._last_total[0]:
            self.rate_per_s = max(total - self._last_total[1], 0) / (now - self._last_total[0])
        self._last_total = (now, total)

    def record(self, decision: dict[str, Any]) -> None:
        """One message of ``fed.decisions``."""
        self.decisions.append(decision)

    # -- derived figures -------------------------------------------------------------

    def merged_nodes(self) -> list[dict[str, Any]]:
        """One entry per node: the worst health and highest latencies any gateway sees."""
        merged: dict[str, dict[str, Any]] = {}
        for reply in self.nodes_replies:
            for n in reply["nodes"]:
                cur = merged.get(n["node_id"])
                if cur is None:
                    merged[n["node_id"]] = dict(n)
                    continue
                if _rank(n["health"]) < _rank(cur["health"]):
                    cur["health"] = n["health"]
                for key in ("latency_p50_ms", "latency_p99_ms"):
                    values = [v for v in (cur.get(key), n.get(key)) if v is not None]
                    cur[key] = max(values) if values else None
        return sorted(merged.values(), key=lambda n: n["node_id"])

    def success_rate(self) -> float:
        """Successful / total over every gateway (1.0 before any request)."""
        total = sum(int(s["total_requests"]) for s in self.stats_replies)
        ok = sum(int(s["successful_requests"]) for s in self.stats_replies)
        return ok / total if total else 1.0

    def title(self) -> str:
        """``Federation Gateway v1.0 │ h/t nodes healthy │ r% success``."""
        nodes = self.merged_nodes()
        healthy = sum(1 for n in nodes if n["health"] == "healthy")
        return (
            f"Federation Gateway {VERSION} │ {healthy}/{len(nodes)} nodes healthy │ "
            f"{self.success_rate() * 100:.1f}% success"
        )

    def status_line(self) -> str:
        """The bottom line: request rate, gateways, status, keys."""
        extra = f" │ {self.status}" if self.status else ""
        return (
            f"{self.rate_per_s:.1f} req/s │ {len(self.stats_replies)} gateway(s){extra} │ "
            "q quit  1-6/Tab tabs  ? help"
        )

    # -- drawing ---------------------------------------------------------------------

    def panel(self, tab: Tab) -> tuple[str, RenderableType]:
        """One tab's title and content."""
        return _PANELS[tab](self)

    def frame(self, tabs: Sequence[Tab] | None = None) -> RenderableType:
        """Every panel (or ``tabs``) boxed, between the title and status lines (``--once``)."""
        boxed: list[RenderableType] = [Text(self.title(), style="bold"), Text()]
        for tab in tabs or [t for t in Tab if t is not Tab.HELP]:
            title, content = self.panel(tab)
            boxed.append(Panel(content, title=title, title_align="left", box=box.SQUARE))
        boxed += [Text(), Text(self.status_line(), no_wrap=True, overflow="ellipsis")]
        return Group(*boxed)


_PANELS: dict[Tab, Callable[[Dashboard], tuple[str, RenderableType]]] = {
    Tab.CATALOG: catalog_panel,
    Tab.HEALTH: health_panel,
    Tab.ROUTING: routing_panel,
    Tab.CIRCUITS: circuits_panel,
    Tab.STATS: stats_panel,
    Tab.POLICIES: policies_panel,
    Tab.HELP: help_panel,
}
