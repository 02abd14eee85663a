"""The panels of ``fedgate top``: pure functions from gateway replies to text lines.

No I/O here: ``Dashboard`` holds what the control subjects answered and the routing
decisions seen, and ``frame()`` draws it at a given size. Colour goes through a
``Paint`` function (ANSI on a terminal, identity for ``--once``), applied after padding
so that escape codes never upset the column widths. Tabs, titles and empty-state
texts follow the reference dashboard (SEMANTICS.md section 8).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

VERSION = "v1.0"
MAX_HISTORY = 100
"""Routing decisions kept (oldest dropped first)."""
MAX_ROUTING_ROWS = 20

Paint = Callable[[str, str], str]
"""``paint(text, style)``; styles: green, yellow, red, dim, bold, reverse, or ""."""

Cell = str | tuple[str, str]
"""A table cell: plain text, or ``(text, style)``."""


def plain(text: str, style: str) -> str:
    """No colour (``--once`` and pipes)."""
    return text


_ANSI = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1", "reverse": "7"}


def ansi(text: str, style: str) -> str:
    """SGR colour codes around ``text``."""
    code = _ANSI.get(style)
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


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
        key = "?" if self is Tab.HELP else str(self.value + 1)
        return f"{self.name.capitalize()} [{key}]"

    @classmethod
    def from_index(cls, i: int) -> Tab:
        """0..5 in order; anything else is Help (as the reference)."""
        return cls(i) if 0 <= i < 6 else cls.HELP


_STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unknown": "dim",
    "closed": "green",
    "half_open": "yellow",
    "open": "red",
    "ready": "green",
    "draining": "yellow",
}
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


def _styled(text: str) -> Cell:
    return (text, _STATE_STYLE.get(text, ""))


def _ms(value: Any) -> str:
    return "-" if value is None else f"{round(value)}ms"


@dataclass(slots=True)
class Dashboard:
    """What the dashboard shows: the last answers of every gateway, recent decisions."""

    tab: Tab = Tab.CATALOG
    nodes_replies: list[dict[str, Any]] = field(default_factory=list)
    stats_replies: list[dict[str, Any]] = field(default_factory=list)
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    rate_per_s: float = 0.0
    status: str = ""
    scroll: int = 0
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

    def next_tab(self, step: int = 1) -> None:
        """Cycle through the seven tabs (wrapping), back to the first row."""
        self.tab = Tab((self.tab + step) % len(Tab))
        self.scroll = 0

    def select_tab(self, tab: Tab) -> None:
        """Jump to a tab."""
        self.tab = tab
        self.scroll = 0

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
        """The bottom line: title figures, request rate, gateways, keys."""
        extra = f" │ {self.status}" if self.status else ""
        return (
            f"{self.title()} │ {self.rate_per_s:.1f} req/s │ "
            f"{len(self.stats_replies)} gateway(s){extra} │ q quit  1-6/Tab tabs  ? help"
        )

    # -- drawing ---------------------------------------------------------------------

    def panel(
        self, tab: Tab, width: int, height: int | None = None, paint: Paint = plain
    ) -> list[str]:
        """One boxed panel, ``width`` columns wide (and at most ``height`` rows)."""
        inner = max(width - 4, 20)
        title, lines = _PANELS[tab](self, inner, paint)
        body = lines[self.scroll :] if tab is self.tab else lines
        if height is not None:
            body = body[: max(height - 2, 0)]
        top = f"┌─ {title} " + "─" * max(inner - len(title) - 1, 0) + "┐"
        rows = [f"│ {_pad(line, inner)} │" for line in body]
        if height is not None:
            rows += [f"│ {' ' * inner} │"] * max(height - 2 - len(body), 0)
        return [paint(top, "bold"), *rows, "└" + "─" * (inner + 2) + "┘"]

    def tab_bar(self, paint: Paint = plain) -> str:
        """`` Catalog [1] │ Health [2] │ ...`` with the current tab highlighted."""
        parts = [paint(f" {t.title} ", "reverse" if t is self.tab else "") for t in Tab]
        return "│".join(parts)

    def frame(self, width: int, height: int, paint: Paint = plain) -> list[str]:
        """The interactive screen: title, tab bar, current panel, status line."""
        title = self.title()
        head = [
            "┌" + "─" * (width - 2) + "┐",
            "│ " + paint(_pad(title, width - 4), "bold") + " │",
            "└" + "─" * (width - 2) + "┘",
            self.tab_bar(paint),
        ]
        panel = self.panel(self.tab, width, max(height - len(head) - 1, 3), paint)
        return [*head, *panel, paint(_pad(self.status_line(), width), "reverse")][:height]

    def frame_all(self, width: int, tabs: Sequence[Tab] | None = None) -> list[str]:
        """Every panel one after the other, without colour (``--once``)."""
        out = [self.title(), ""]
        for tab in tabs or [t for t in Tab if t is not Tab.HELP]:
            out += [*self.panel(tab, width), ""]
        out.append(self.status_line())
        return out


def _rank(state: str) -> int:
    return _WORST_FIRST.index(state) if state in _WORST_FIRST else len(_WORST_FIRST)


def _visible_len(line: str) -> int:
    """Length without SGR escape codes."""
    n, i = 0, 0
    while i < len(line):
        if line[i] == "\x1b":
            i = line.find("m", i) + 1 or len(line)
            continue
        n, i = n + 1, i + 1
    return n


def _pad(line: str, width: int) -> str:
    visible = _visible_len(line)
    if visible > width:
        return truncate(line, width) if visible == len(line) else line
    return line + " " * (width - visible)


def grid(
    headers: Sequence[str],
    widths_pct: Sequence[int],
    rows: Sequence[Sequence[Cell]],
    width: int,
    paint: Paint,
) -> list[str]:
    """A table whose columns take the given percentages of ``width``."""
    widths = [max(width * p // 100, len(hd) + 1) for hd, p in zip(headers, widths_pct, strict=True)]
    widths[-1] = max(width - sum(widths[:-1]), len(headers[-1]))

    def line(cells: Sequence[Cell], bold: bool = False) -> str:
        parts = []
        for cell, w in zip(cells, widths, strict=True):
            text, style = cell if isinstance(cell, tuple) else (cell, "")
            parts.append(paint(truncate(text, w - 1).ljust(w), "bold" if bold else style))
        return "".join(parts)

    return [line(headers, bold=True), *(line(r) for r in rows)]


# -- the panels ------------------------------------------------------------------------

PanelFn = Callable[[Dashboard, int, Paint], tuple[str, list[str]]]


def catalog_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``MODEL CATALOG``: one row per model deployment on a node."""
    rows: list[list[Cell]] = []
    for n in d.merged_nodes():
        status = "draining" if n.get("draining") else "ready"
        for md in n["models"]:
            caps = ", ".join(md["capabilities"])
            rows.append([md["model"], n["node_id"], n["region"], caps, _styled(status)])
    title = "MODEL CATALOG"
    if not rows:
        return title, ["No models registered. Start a worker: fedgate worker --model MODEL"]
    rows.sort(key=lambda r: (str(r[0]), str(r[1])))
    head = ["Model", "Node", "Region", "Capabilities", "Status"]
    return title, grid(head, [20, 20, 15, 30, 15], rows, width, paint)


def health_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``NODE HEALTH``: state and latency percentiles (worst view of any gateway)."""
    rows: list[list[Cell]] = [
        [
            n["node_id"],
            _styled(n["health"]),
            _ms(n.get("latency_p50_ms")),
            _ms(n.get("latency_p99_ms")),
            f"{n.get('in_flight', 0)}/{n.get('capacity', 0)}",
        ]
        for n in d.merged_nodes()
    ]
    if not rows:
        return "NODE HEALTH", ["No nodes registered for health monitoring."]
    head = ["Node", "State", "Latency P50", "Latency P99", "Queue"]
    return "NODE HEALTH", grid(head, [25, 20, 20, 20, 15], rows, width, paint)


def routing_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``ROUTING DECISIONS``: the newest decisions of ``fed.decisions`` first."""
    rows: list[list[Cell]] = []
    for dec in list(reversed(d.decisions))[:MAX_ROUTING_ROWS]:
        outcome = str(dec.get("outcome") or "")
        style = "green" if outcome == "ok" else ("red" if outcome else "")
        rows.append(
            [
                truncate(str(dec.get("request_id", "")), 12),
                str(dec.get("capability", "")),
                str(dec.get("chosen") or "-"),
                f"{float(dec.get('score') or 0.0):.2f}",
                str(dec.get("attempt", "")),
                (outcome or "-", style),
                str(dec.get("gateway") or "-"),
                truncate(str(dec.get("reason", "")), 30),
            ]
        )
    if not rows:
        return "ROUTING DECISIONS", ["No routing decisions recorded yet."]
    head = ["Request", "Capability", "Selected", "Score", "Try", "Outcome", "Gateway", "Reason"]
    return "ROUTING DECISIONS", grid(head, [14, 12, 15, 7, 5, 12, 11, 24], rows, width, paint)


def circuits_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``CIRCUIT BREAKERS``: each gateway keeps its own circuit per node."""
    rows: list[list[Cell]] = [
        [
            n["node_id"],
            str(reply.get("gateway", "-")),
            _styled(n["circuit"]),
            str(n.get("failures", 0)),
        ]
        for reply in d.nodes_replies
        for n in sorted(reply["nodes"], key=lambda n: n["node_id"])
    ]
    if not rows:
        return "CIRCUIT BREAKERS", ["No circuit breakers active."]
    head = ["Node", "Gateway", "State", "Failures"]
    return "CIRCUIT BREAKERS", grid(head, [30, 25, 25, 20], rows, width, paint)


def stats_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``GATEWAY STATS``: totals over every gateway, a success gauge, one row per gateway."""
    ss = d.stats_replies

    def total(key: str) -> int:
        return sum(int(s.get(key) or 0) for s in ss)

    ok = total("successful_requests")
    avg = (
        sum(int(s["avg_latency_ms"]) * int(s["successful_requests"]) for s in ss) / ok if ok else 0
    )
    rate = d.success_rate()
    bar_w = max(min(width - 30, 50), 10)
    filled = round(rate * bar_w)
    style = "green" if rate >= 0.99 else ("yellow" if rate >= 0.95 else "red")
    lines = [
        f"Total Requests:  {total('total_requests')}",
        f"Successful:      {ok}",
        f"Failed:          {total('failed_requests')}",
        f"Total Tokens:    {total('total_tokens')}",
        f"Avg Latency:     {round(avg)}ms",
        f"Active Streams:  {total('active_streams')}",
        f"Retries:         {total('retries')}   Failovers: {total('failovers')}",
        f"Request Rate:    {d.rate_per_s:.1f} req/s",
        "Success Rate:    "
        + paint("█" * filled + "░" * (bar_w - filled), style)
        + f" {rate * 100:.1f}%",
        "",
    ]
    if not ss:
        return "GATEWAY STATS", [*lines, "No gateway answered."]
    rows: list[list[Cell]] = [
        [
            str(s.get("gateway", "-")),
            str(s["total_requests"]),
            str(s["successful_requests"]),
            str(s["failed_requests"]),
            f"{s['p50_latency_ms']}ms",
            f"{s['p99_latency_ms']}ms",
            str(s.get("in_flight", "-")),
        ]
        for s in ss
    ]
    head = ["Gateway", "Total", "OK", "Failed", "P50", "P99", "In flight"]
    return "GATEWAY STATS", [*lines, *grid(head, [22, 13, 13, 13, 13, 13, 13], rows, width, paint)]


def _policies(d: Dashboard) -> list[tuple[str, float]]:
    """The gateways' policies when they report them, else the default set."""
    for s in d.stats_replies:
        if s.get("policies"):
            return [(str(p["name"]), float(p.get("weight", 1.0))) for p in s["policies"]]
    from gateway.policies import CompositePolicy

    return [(p.name, p.weight) for p in CompositePolicy.enterprise_default().policies]


def policies_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``ACTIVE POLICIES``: name, weight, description."""
    rows: list[list[Cell]] = [
        [name, f"{weight:.1f}", ("Active", "green"), POLICY_DESCRIPTIONS.get(name, "")]
        for name, weight in _policies(d)
    ]
    strategies = sorted({str(s["strategy"]) for s in d.stats_replies if s.get("strategy")})
    head = ["Policy", "Weight", "Status", "Description"]
    lines = grid(head, [15, 10, 15, 60], rows, width, paint)
    if strategies:
        lines += ["", f"Load balancing: {', '.join(strategies)}"]
    return "ACTIVE POLICIES", lines


def help_panel(d: Dashboard, width: int, paint: Paint) -> tuple[str, list[str]]:
    """``Help``: the keys and what each panel shows."""
    return "Help", [
        paint("Federation Gateway Dashboard", "bold"),
        "",
        paint("Keyboard Shortcuts", "bold"),
        "  1-6, ?      switch tab",
        "  Tab         next tab",
        "  Shift+Tab   previous tab",
        "  j / Down    scroll down",
        "  k / Up      scroll up",
        "  r           refresh now",
        "  q / Esc     quit (Ctrl-C too)",
        "",
        paint("Panels", "bold"),
        "  • Catalog: models and the nodes serving them",
        "  • Health: node state and latency percentiles",
        "  • Routing: live decisions from fed.decisions",
        "  • Circuits: each gateway's circuit breaker per node",
        "  • Stats: request counters of every gateway",
        "  • Policies: the routing policies and their weights",
    ]


_PANELS: dict[Tab, PanelFn] = {
    Tab.CATALOG: catalog_panel,
    Tab.HEALTH: health_panel,
    Tab.ROUTING: routing_panel,
    Tab.CIRCUITS: circuits_panel,
    Tab.STATS: stats_panel,
    Tab.POLICIES: policies_panel,
    Tab.HELP: help_panel,
}
