"""The panels of ``fedgate top``: one function per tab, a ``Board`` in, rich out.

Each ``*_panel(d)`` returns the tab's title and its content (a rich table or text), from
what a ``Board`` holds: the last ``fed.gateway.nodes``/``stats`` answers of every gateway
(dicts), the routing decisions seen on ``fed.decisions`` and the measured request rate
(requests per second); latencies are shown in milliseconds. ``fedgate.dashboard.Dashboard``
is the Board; it maps its tabs to these functions and re-exports them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from fedgate.tables import state

MAX_ROUTING_ROWS = 20

POLICY_DESCRIPTIONS = {
    "health": "Strongly penalize unhealthy nodes",
    "latency": "Prefer low-latency nodes",
    "privacy": "Enforce data sovereignty",
    "locality": "Prefer same-region nodes",
    "cost": "Balance cost vs performance",
    "load": "Prefer idle nodes",
    "gpu": "Prefer GPU nodes when asked",
}


class Board(Protocol):
    """What the panels read (``fedgate.dashboard.Dashboard`` is one)."""

    nodes_replies: list[dict[str, Any]]
    stats_replies: list[dict[str, Any]]
    decisions: deque[dict[str, Any]]
    rate_per_s: float

    def merged_nodes(self) -> list[dict[str, Any]]:
        """One entry per node: the worst health and highest latencies any gateway sees."""
        ...

    def success_rate(self) -> float:
        """Successful / total over every gateway (1.0 before any request)."""
        ...


def truncate(text: str, n: int) -> str:
    """``text`` if it fits in ``n``, else its start and ``...`` (as the reference)."""
    if len(text) <= n:
        return text
    return text[: max(n - 3, 0)] + "..."[: max(n, 0)]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{round(value)}ms"


def grid(headers: Sequence[str], ratios: Sequence[int]) -> Table:
    """A full-width table whose columns share the width in ``ratios``."""
    t = Table(box=None, expand=True, header_style="bold", pad_edge=False)
    for header, ratio in zip(headers, ratios, strict=True):
        t.add_column(header, ratio=ratio, no_wrap=True, overflow="ellipsis")
    return t


def catalog_panel(d: Board) -> tuple[str, RenderableType]:
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


def health_panel(d: Board) -> tuple[str, RenderableType]:
    """``NODE HEALTH``: state and latency percentiles (worst view of any gateway)."""
    nodes = d.merged_nodes()
    if not nodes:
        return "NODE HEALTH", Text("No nodes registered for health monitoring.")
    t = grid(["Node", "State", "TTFT P50", "TTFT P99", "In flight"], [25, 20, 20, 20, 15])
    for n in nodes:
        t.add_row(
            n["node_id"],
            state(n["health"]),
            _ms(n.get("latency_p50_ms")),
            _ms(n.get("latency_p99_ms")),
            f"{n.get('in_flight', 0)}/{n.get('capacity', 0)}",
        )
    return "NODE HEALTH", t


def routing_panel(d: Board) -> tuple[str, RenderableType]:
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


def circuits_panel(d: Board) -> tuple[str, RenderableType]:
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


def stats_panel(d: Board) -> tuple[str, RenderableType]:
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
    return "GATEWAY STATS", Group(lines, t, *_limit_lines(ss))


def _limit_lines(ss: list[dict[str, Any]]) -> list[Text]:
    """Tenant limits, summed over the gateways: ``acme budget 9850/10000 (refused 3)``."""
    used: dict[tuple[str, str], list[int]] = {}
    for s in ss:
        for x in s.get("limits") or []:
            row = used.setdefault((str(x["tenant"]), str(x["limit"])), [0, int(x["max"]), 0])
            row[0] += int(x["used"])
            row[2] += int(x["refused"])
    lines = []
    for (tenant, limit), (n, top, refused) in sorted(used.items()):
        style = "red" if refused else ""
        lines.append(Text(f"Tenant {tenant} {limit}: {n}/{top} (refused {refused})", style))
    return lines


def policies_panel(d: Board) -> tuple[str, RenderableType]:
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


def help_panel(d: Board) -> tuple[str, RenderableType]:
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
