"""The dashboard's pure parts: tabs, title, merged views and panels (no terminal, no server)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from fedgate.dashboard import MAX_HISTORY, Dashboard, Tab, truncate


def node(node_id: str, health: str = "healthy", **kw: Any) -> dict[str, Any]:
    base = {
        "node_id": node_id, "region": "us-west", "health": health, "circuit": "closed",
        "failures": 0, "latency_p50_ms": 12.0, "latency_p99_ms": 40.0, "in_flight": 1,
        "capacity": 8, "draining": False,
        "models": [{"model": "llama-3-8b", "capabilities": ["code", "generate"]}],
    }  # fmt: skip
    return base | kw


def stats(gateway: str, total: int, ok: int, **kw: Any) -> dict[str, Any]:
    base = {
        "gateway": gateway, "total_requests": total, "successful_requests": ok,
        "failed_requests": total - ok, "total_tokens": 10 * ok, "active_streams": 0,
        "avg_latency_ms": 20, "p50_latency_ms": 18, "p99_latency_ms": 90,
    }  # fmt: skip
    return base | kw


def text(d: Dashboard, width: int = 120, tabs: list[Tab] | None = None) -> str:
    """The ``--once`` frame as plain text."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(d.frame(tabs))
    return out.getvalue()


def test_tabs_follow_the_reference() -> None:
    assert [t.title for t in Tab] == [
        "Catalog [1]", "Health [2]", "Routing [3]", "Circuits [4]", "Stats [5]",
        "Policies [6]", "Help [?]",
    ]  # fmt: skip
    assert Tab.from_index(3) is Tab.CIRCUITS
    assert Tab.from_index(7) is Tab.HELP


def test_truncate_as_the_reference() -> None:
    assert truncate("abcdef", 3) == "..."
    assert truncate("very long string", 10) == "very lo..."
    assert truncate("short", 10) == "short"


def test_empty_dashboard_shows_every_panel_with_its_empty_text() -> None:
    frame = text(Dashboard(), 100)
    assert "Federation Gateway v1.0 │ 0/0 nodes healthy │ 100.0% success" in frame
    for title in ("MODEL CATALOG", "NODE HEALTH", "ROUTING DECISIONS", "CIRCUIT BREAKERS",
                  "GATEWAY STATS", "ACTIVE POLICIES"):  # fmt: skip
        assert f"┌─ {title} " in frame
    assert "No models registered" in frame
    assert "No nodes registered for health monitoring." in frame
    assert "No routing decisions recorded yet." in frame
    assert "No circuit breakers active." in frame
    assert "Total Requests:" in frame
    assert "No gateway reported its policies." in frame  # read over NATS only, no defaults
    assert "Keyboard Shortcuts" not in frame  # the help tab is not a panel of the frame
    assert all(len(line) <= 100 for line in frame.splitlines())


def test_title_merges_every_gateway_view() -> None:
    d = Dashboard()
    d.update(
        [
            {"gateway": "gw-1", "nodes": [node("a"), node("b")]},
            {"gateway": "gw-2", "nodes": [node("a", "degraded", latency_p99_ms=80.0), node("b")]},
        ],
        [stats("gw-1", 10, 9), stats("gw-2", 10, 10)],
        now=1.0,
    )
    assert d.title() == "Federation Gateway v1.0 │ 1/2 nodes healthy │ 95.0% success"
    a = next(n for n in d.merged_nodes() if n["node_id"] == "a")
    assert (a["health"], a["latency_p99_ms"]) == ("degraded", 80.0)
    d.update([], [stats("gw-1", 20, 19), stats("gw-2", 20, 20)], now=3.0)
    assert d.rate_per_s == 10.0
    d.update([{"error": "internal", "message": "x"}], [{"error": "internal"}], now=4.0)
    assert (d.nodes_replies, d.stats_replies) == ([], [])  # error replies are not views


def test_panels_show_nodes_decisions_circuits_and_policies() -> None:
    d = Dashboard()
    policies = [{"name": "health", "weight": 2.0}, {"name": "latency", "weight": 1.0}]
    d.update(
        [{"gateway": "gw-1", "nodes": [node("gpu-1"), node("gpu-2", "unhealthy", circuit="open")]}],
        [stats("gw-1", 4, 4, policies=policies, strategy="power_of_two")],
        now=1.0,
    )
    for i in range(MAX_HISTORY + 5):
        d.record(
            {"request_id": f"req-{i}", "capability": "generate", "chosen": "gpu-1",
             "attempt": 1, "score": 1.234, "reason": "least_latency", "outcome": "ok"}
        )  # fmt: skip
    assert len(d.decisions) == MAX_HISTORY
    frame = text(d, 120)
    assert "llama-3-8b" in frame and "code, generate" in frame
    assert "12ms" in frame and "40ms" in frame
    assert "req-104" in frame and "req-5 " not in frame  # newest first, 20 rows at most
    assert "req-84 " not in frame and "req-85 " in frame
    assert "1.23" in frame
    assert "open" in frame
    assert "Strongly penalize unhealthy nodes" in frame and "2.0" in frame
    assert "Load balancing: power_of_two" in frame


def test_states_are_coloured_on_a_terminal() -> None:
    d = Dashboard()
    d.update([{"gateway": "g", "nodes": [node("n1"), node("n2", "unhealthy")]}], [], now=1.0)
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=True, color_system="standard").print(
        d.frame([Tab.HEALTH])
    )
    assert "\x1b[32mhealthy" in out.getvalue()
    assert "\x1b[31munhealthy" in out.getvalue()


def test_help_panel_lists_the_keys() -> None:
    title, _ = Dashboard().panel(Tab.HELP)
    assert title == "Help"
    assert "Keyboard Shortcuts" in text(Dashboard(), 100, [Tab.HELP])
