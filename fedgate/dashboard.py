"""What ``fedgate top`` shows: the gateways' answers, and its panels as rich renderables.

No I/O and no gateway code: ``Dashboard`` holds what the inspection subjects answered
(``fed.gateway.nodes``/``stats``) and the routing decisions seen on ``fed.decisions``;
``panel()`` draws one tab as a rich table, which the textual app (``fedgate.top``) shows
in its tab and ``frame()`` prints for ``top --once``. Tabs, titles and empty-state
texts follow the reference dashboard.
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
from rich.table import Table
from rich.text import Text

from fedgate.tables import state

VERSION = "v1.0"
MAX_HISTORY = 100
"""Routing decisions kept (oldest dropped first)."""
MAX_ROUTING_ROWS = 20


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

POLICY_DESCRIPTIONS = {
    "health": "Strongly penalize unhealthy nodes",
    "latency": "Prefer low-latency nodes",
    "privacy": "Enforce data sovereignty",
    "locality": "Prefer same-region nodes",
    "cost": "Balance cost vs performance",
    "load": "Prefer idle nodes",
    "gpu": "Prefer GPU nodes when asked",
}


def truncate(text: str, n: int) -> str:
    """``text`` if it fits in ``n``, else its start and ``...`` (as the reference)."""
    if len(text) <= n:
        return text
    return text[: max(n - 3, 0)] + "..."[: max(n, 0)]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{round(value)}ms"


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


# -- the panels ------------------------------------------------------------------------


def grid(headers: Sequence[str], ratios: Sequence[int]) -> Table:
    """A full-width table whose columns share the width in ``ratios``."""
    t = Table(box=None, expand=True, header_style="bold", pad_edge=False)
    for header, ratio in zip(headers, ratios, strict=True):
        t.add_column(header, ratio=ratio, no_wrap=True, overflow="ellipsis")
    return t


def catalog_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``MODEL CATALOG``: one row per model deployment on a node."""
    rows = []
    for n in d.merged_nodes():
        status = "draining" if n.get("draining") else "ready"
        for md in n["models"]:
            caps = ", ".join(md["capabilities"])
            rows.append((md["model"], n["node_id"], n["region"], caps, status))
    if not rows:
        return "MODEL CATALOG", Text(
            "No models registered. Start a worker: fedgate worker --model MODEL"
        )
    t = grid(["Model", "Node", "Region", "Capabilities", "Status"], [20, 20, 15, 30, 15])
    for model, node, region, caps, status in sorted(rows):
        t.add_row(model, node, region, caps, state(status))
    return "MODEL CATALOG", t


def health_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``NODE HEALTH``: state and latency percentiles (worst view of any gateway)."""
    nodes = d.merged_nodes()
    if not nodes:
        return "NODE HEALTH", Text("No nodes registered for health monitoring.")
    t = grid(["Node", "State", "Latency P50", "Latency P99", "Queue"], [25, 20, 20, 20, 15])
    for n in nodes:
        t.add_row(
            n["node_id"],
            state(n["health"]),
            _ms(n.get("latency_p50_ms")),
            _ms(n.get("latency_p99_ms")),
            f"{n.get('in_flight', 0)}/{n.get('capacity', 0)}",
        )
    return "NODE HEALTH", t


def routing_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``ROUTING DECISIONS``: the newest decisions of ``fed.decisions`` first."""
    if not d.decisions:
        return "ROUTING DECISIONS", Text("No routing decisions recorded yet.")
    t = grid(
        ["Request", "Capability", "Selected", "Score", "Try", "Outcome", "Gateway", "Reason"],
        [14, 12, 15, 7, 5, 12, 11, 24],
    )
    for dec in list(reversed(d.decisions))[:MAX_ROUTING_ROWS]:
        outcome = str(dec.get("outcome") or "")
        style = "green" if outcome == "ok" else ("red" if outcome else "")
        t.add_row(
            truncate(str(dec.get("request_id", "")), 12),
            str(dec.get("capability", "")),
            str(dec.get("chosen") or "-"),
            f"{float(dec.get('score') or 0.0):.2f}",
            str(dec.get("attempt", "")),
            Text(outcome or "-", style=style),
            str(dec.get("gateway") or "-"),
            truncate(str(dec.get("reason", "")), 30),
        )
    return "ROUTING DECISIONS", t


def circuits_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``CIRCUIT BREAKERS``: each gateway keeps its own circuit per node."""
    rows = [
        (n["node_id"], str(reply.get("gateway", "-")), n["circuit"], str(n.get("failures", 0)))
        for reply in d.nodes_replies
        for n in sorted(reply["nodes"], key=lambda n: n["node_id"])
    ]
    if not rows:
        return "CIRCUIT BREAKERS", Text("No circuit breakers active.")
    t = grid(["Node", "Gateway", "State", "Failures"], [30, 25, 25, 20])
    for node, gateway, circuit, failures in rows:
        t.add_row(node, gateway, state(circuit), failures)
    return "CIRCUIT BREAKERS", t


def stats_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``GATEWAY STATS``: totals over every gateway, a success gauge, one row per gateway."""
    ss = d.stats_replies

    def total(key: str) -> int:
        return sum(int(s.get(key) or 0) for s in ss)

    ok = total("successful_requests")
    avg = (
        sum(int(s["avg_latency_ms"]) * int(s["successful_requests"]) for s in ss) / ok if ok else 0
    )
    rate = d.success_rate()
    bar_w = 40
    filled = round(rate * bar_w)
    style = "green" if rate >= 0.99 else ("yellow" if rate >= 0.95 else "red")
    lines = Text(
        f"Total Requests:  {total('total_requests')}\n"
        f"Successful:      {ok}\n"
        f"Failed:          {total('failed_requests')}\n"
        f"Total Tokens:    {total('total_tokens')}\n"
        f"Avg Latency:     {round(avg)}ms\n"
        f"Active Streams:  {total('active_streams')}\n"
        f"Retries:         {total('retries')}   Failovers: {total('failovers')}\n"
        f"Request Rate:    {d.rate_per_s:.1f} req/s\n"
        "Success Rate:    "
    )
    lines.append("█" * filled + "░" * (bar_w - filled), style=style)
    lines.append(f" {rate * 100:.1f}%\n")
    if not ss:
        return "GATEWAY STATS", Group(lines, Text("No gateway answered."))
    t = grid(["Gateway", "Total", "OK", "Failed", "P50", "P99", "In flight"], [22] + [13] * 6)
    for s in ss:
        t.add_row(
            str(s.get("gateway", "-")),
            str(s["total_requests"]),
            str(s["successful_requests"]),
            str(s["failed_requests"]),
            f"{s['p50_latency_ms']}ms",
            f"{s['p99_latency_ms']}ms",
            str(s.get("in_flight", "-")),
        )
    return "GATEWAY STATS", Group(lines, t)


def policies_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``ACTIVE POLICIES``: name, weight and description, as the gateways report them."""
    reported = next((s["policies"] for s in d.stats_replies if s.get("policies")), None)
    if not reported:
        return "ACTIVE POLICIES", Text("No gateway reported its policies.")
    t = grid(["Policy", "Weight", "Status", "Description"], [15, 10, 15, 60])
    for p in reported:
        name = str(p["name"])
        weight = float(p.get("weight", 1.0))
        t.add_row(name, f"{weight:.1f}", Text("Active", "green"), POLICY_DESCRIPTIONS.get(name, ""))
    strategies = sorted({str(s["strategy"]) for s in d.stats_replies if s.get("strategy")})
    if not strategies:
        return "ACTIVE POLICIES", t
    return "ACTIVE POLICIES", Group(t, Text(), Text(f"Load balancing: {', '.join(strategies)}"))


def help_panel(d: Dashboard) -> tuple[str, RenderableType]:
    """``Help``: the keys and what each panel shows."""
    text = Text()
    text.append("Federation Gateway Dashboard\n\n", style="bold")
    text.append("Keyboard Shortcuts\n", style="bold")
    text.append(
        "  1-6, ?      switch tab\n"
        "  Tab         next tab\n"
        "  Shift+Tab   previous tab\n"
        "  j / Down    scroll down\n"
        "  k / Up      scroll up\n"
        "  r           refresh now\n"
        "  q / Esc     quit (Ctrl-C too)\n\n"
    )
    text.append("Panels\n", style="bold")
    text.append(
        "  • Catalog: models and the nodes serving them\n"
        "  • Health: node state and latency percentiles\n"
        "  • Routing: live decisions from fed.decisions\n"
        "  • Circuits: each gateway's circuit breaker per node\n"
        "  • Stats: request counters of every gateway\n"
        "  • Policies: the routing policies and their weights"
    )
    return "Help", text


_PANELS: dict[Tab, Callable[[Dashboard], tuple[str, RenderableType]]] = {
    Tab.CATALOG: catalog_panel,
    Tab.HEALTH: health_panel,
    Tab.ROUTING: routing_panel,
    Tab.CIRCUITS: circuits_panel,
    Tab.STATS: stats_panel,
    Tab.POLICIES: policies_panel,
    Tab.HELP: help_panel,
}
