"""The dashboard's pure parts: tabs, title, panels and keys (no terminal, no server)."""

from __future__ import annotations

from typing import Any

from fedgate.panels import MAX_HISTORY, Dashboard, Tab, ansi, plain, truncate
from fedgate.top import _handle_key


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


def test_tabs_follow_the_reference() -> None:
    assert [t.title for t in Tab] == [
        "Catalog [1]", "Health [2]", "Routing [3]", "Circuits [4]", "Stats [5]",
        "Policies [6]", "Help [?]",
    ]  # fmt: skip
    assert Tab.from_index(3) is Tab.CIRCUITS
    assert Tab.from_index(7) is Tab.HELP
    d = Dashboard()
    d.next_tab(-1)
    assert d.tab is Tab.HELP
    d.next_tab()
    assert d.tab is Tab.CATALOG


def test_truncate_as_the_reference() -> None:
    assert truncate("abcdef", 3) == "..."
    assert truncate("very long string", 10) == "very lo..."
    assert truncate("short", 10) == "short"


def test_empty_dashboard_shows_every_panel_with_its_empty_text() -> None:
    text = "\n".join(Dashboard().frame_all(100))
    assert "Federation Gateway v1.0 │ 0/0 nodes healthy │ 100.0% success" in text
    for title in ("MODEL CATALOG", "NODE HEALTH", "ROUTING DECISIONS", "CIRCUIT BREAKERS",
                  "GATEWAY STATS", "ACTIVE POLICIES"):  # fmt: skip
        assert title in text
    assert "No models registered" in text
    assert "No nodes registered for health monitoring." in text
    assert "No routing decisions recorded yet." in text
    assert "No circuit breakers active." in text
    assert "Total Requests:" in text
    assert "health" in text and "latency" in text


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


def test_panels_show_nodes_decisions_and_circuits() -> None:
    d = Dashboard()
    d.update(
        [{"gateway": "gw-1", "nodes": [node("gpu-1"), node("gpu-2", "unhealthy", circuit="open")]}],
        [stats("gw-1", 4, 4)],
        now=1.0,
    )
    for i in range(MAX_HISTORY + 5):
        d.record(
            {"request_id": f"req-{i}", "capability": "generate", "chosen": "gpu-1",
             "attempt": 1, "score": 1.234, "reason": "least_latency", "outcome": "ok"}
        )  # fmt: skip
    assert len(d.decisions) == MAX_HISTORY
    text = "\n".join(d.frame_all(120))
    assert "llama-3-8b" in text and "code, generate" in text
    assert "12ms" in text and "40ms" in text
    assert "req-104" in text and "req-5 " not in text  # newest first, 20 rows at most
    assert "1.23" in text
    assert "open" in text


def test_interactive_frame_fits_the_screen_and_colours_states() -> None:
    d = Dashboard(tab=Tab.HEALTH)
    d.update([{"gateway": "g", "nodes": [node("n1")]}], [stats("g", 1, 1)], now=1.0)
    lines = d.frame(100, 30, ansi)
    assert len(lines) == 30
    assert "\x1b[32mhealthy" in "\n".join(lines)
    assert plain("x", "red") == "x"


def test_keys_switch_tabs_and_quit() -> None:
    d = Dashboard()
    assert _handle_key(d, "3") is None and d.tab is Tab.ROUTING
    assert _handle_key(d, "\t") is None and d.tab is Tab.CIRCUITS
    assert _handle_key(d, "\x1b[Z") is None and d.tab is Tab.ROUTING
    assert _handle_key(d, "?") is None and d.tab is Tab.HELP
    assert _handle_key(d, "r") == "refresh"
    for key in ("q", "\x1b", "\x03"):
        assert _handle_key(d, key) == "quit"
