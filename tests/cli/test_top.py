"""The textual app of ``fedgate top``, headless (textual's pilot): keys, tabs, polling."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from rich.console import Console
from textual.widgets import Static

from fedgate.dashboard import Dashboard, Tab
from fedgate.top import TopApp
from tests.cli.test_dashboard import node, stats


class Feed:
    """A stand-in for the gateways: each poll fills the dashboard and is counted."""

    def __init__(self, dash: Dashboard, alive: bool = True, fail: bool = False) -> None:
        self.dash, self.alive, self.fail = dash, alive, fail
        self.polls = 0
        self.polled = asyncio.Event()

    async def poll(self) -> bool:
        self.polls += 1
        self.polled.set()
        if self.fail:
            raise RuntimeError("boom")
        self.dash.update(
            [{"gateway": "gw-1", "nodes": [node("gpu-1"), node("gpu-2", "degraded")]}],
            [stats("gw-1", 10 * self.polls, 10 * self.polls)],
            now=float(self.polls),
        )
        return self.alive

    async def until(self, polls: int) -> None:
        """Wait until ``polls`` polls were made."""
        async with asyncio.timeout(5):
            while self.polls < polls:
                self.polled.clear()
                await self.polled.wait()


def shown(app: TopApp, tab: Tab) -> str:
    """The text of a tab's panel as the app holds it."""
    content: Any = app.query_one(f"#{tab.name.lower()}-panel", Static).content
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(content)
    return out.getvalue()


async def test_keys_switch_tabs_refresh_and_quit() -> None:
    dash = Dashboard()
    feed = Feed(dash)
    app = TopApp(dash, feed.poll, interval_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await feed.until(1)
        await pilot.pause()
        assert app.tab is Tab.CATALOG
        assert "gpu-1" in shown(app, Tab.CATALOG)
        assert "Federation Gateway v1.0 │ 1/2 nodes healthy" in str(
            app.query_one("#title", Static).content
        )
        keys = [("3", Tab.ROUTING), ("tab", Tab.CIRCUITS), ("shift+tab", Tab.ROUTING),
                ("question_mark", Tab.HELP), ("tab", Tab.CATALOG), ("shift+tab", Tab.HELP),
                ("6", Tab.POLICIES), ("1", Tab.CATALOG)]  # fmt: skip
        for key, tab in keys:
            await pilot.press(key)
            assert app.tab is tab, key
        await pilot.press("r")  # refresh now, not in 60 s
        await feed.until(2)
        await pilot.press("q")
    assert (app.return_value, app.return_code) == (0, 0)


async def test_escape_and_ctrl_c_quit_too() -> None:
    for key in ("escape", "ctrl+c"):
        dash = Dashboard()
        app = TopApp(dash, Feed(dash).poll, interval_s=60)
        async with app.run_test() as pilot:
            await pilot.press(key)
        assert app.return_value == 0, key


async def test_starts_on_the_tab_asked_and_shows_routing_decisions_as_they_arrive() -> None:
    dash = Dashboard()
    feed = Feed(dash)
    app = TopApp(dash, feed.poll, interval_s=60, tab=Tab.ROUTING)
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.tab is Tab.ROUTING
        assert "No routing decisions recorded yet." in shown(app, Tab.ROUTING)
        dash.record({"request_id": "req-1", "capability": "generate", "chosen": "gpu-1",
                     "attempt": 1, "score": 0.5, "outcome": "ok", "gateway": "gw-1"})  # fmt: skip
        app.changed()
        await pilot.pause(0.5)  # the redraw timer (0.25 s) has run
        assert "req-1" in shown(app, Tab.ROUTING)


async def test_a_failing_poll_is_shown_and_a_gone_source_ends_the_app() -> None:
    dash = Dashboard()
    feed = Feed(dash, fail=True)
    app = TopApp(dash, feed.poll, interval_s=60)
    async with app.run_test() as pilot:
        await feed.until(1)
        await pilot.pause()
        assert "refresh failed: boom" in str(app.query_one("#status", Static).content)
        await pilot.press("q")

    dash = Dashboard()
    app = TopApp(dash, Feed(dash, alive=False).poll, interval_s=60)
    async with app.run_test() as pilot:
        await pilot.pause(0.5)
    assert (app.return_value, app.return_code) == (1, 1)
