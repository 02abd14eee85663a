"""``fedgate top``: a live dashboard of the federation (textual), or one frame (rich).

It knows gateways only over NATS: every ``--interval`` it asks ``fed.gateway.nodes`` and
``stats`` (every gateway answers both) and it follows ``fed.decisions``. ``--once``, or
a stdout or stdin that is not a terminal, prints one frame of every panel and exits.
Keys: 1-6 and ``?`` switch tabs, Tab/Shift+Tab cycle, j/k scroll, r refreshes, q, Esc
or Ctrl-C quit. The panels themselves are drawn by ``fedgate.dashboard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from rich.console import Console
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static, TabbedContent, TabPane

from fedgate.dashboard import Dashboard, Tab
from fedgate.gather import gather_on
from fedgate.options import Invocation, Params, nats_config
from shared.subjects import Subjects

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

TABS = {tab.name.lower(): tab for tab in Tab}
"""``--tab`` names (and pane ids) -> tabs."""

REDRAW_S = 0.25
"""How often decisions that arrived between two refreshes are drawn."""


async def refresh(nc: Client, dash: Dashboard, subjects: Subjects) -> None:
    """Ask every gateway for its nodes and stats (both at once) and update the dashboard."""
    nodes, stats = await asyncio.gather(
        gather_on(nc, subjects.gateway_nodes), gather_on(nc, subjects.gateway_stats)
    )
    dash.update(nodes, stats, asyncio.get_running_loop().time())
    dash.status = "" if stats else "no gateway answers"


class TopApp(App[int]):
    """The dashboard: the title, a tab per panel, the status line and the keys."""

    TITLE = "fedgate top"
    ESCAPE_TO_MINIMIZE = False
    CSS = """
    #title { height: 1; padding: 0 1; background: $primary; color: $text; text-style: bold; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    .panel { border: round $accent; border-title-style: bold; padding: 0 1; height: auto; }
    #status { height: 1; padding: 0 1; background: $panel; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("escape", "quit", "Quit", show=False),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        *(
            Binding(
                "question_mark" if tab is Tab.HELP else tab.key,
                f"show_tab('{tab.name.lower()}')",
                tab.name.capitalize(),
                show=False,
            )
            for tab in Tab
        ),
        Binding("tab", "cycle(1)", "Next tab", priority=True),
        Binding("shift+tab", "cycle(-1)", "Previous tab", show=False, priority=True),
        Binding("j,down", "scroll(1)", "Scroll", show=False),
        Binding("k,up", "scroll(-1)", "Scroll up", show=False),
        Binding("r", "refresh_now", "Refresh"),
    ]

    def __init__(
        self,
        dash: Dashboard,
        poll: Callable[[], Awaitable[bool]],
        interval_s: float = 1.0,
        tab: Tab = Tab.CATALOG,
    ) -> None:
        """``poll`` updates ``dash`` (False: the source is gone, quit); every ``interval_s``."""
        super().__init__()
        self.dash = dash
        self.poll = poll
        self.interval_s = interval_s
        self.first_tab = tab
        self.refresh_now = asyncio.Event()
        self.polls = 0
        """Polls done (tests wait on it)."""
        self._dirty = False

    # -- layout and drawing ----------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Title line, one tab per panel, status line, key bar."""
        yield Static(id="title")
        with TabbedContent(initial=self.first_tab.name.lower()):
            for tab in Tab:
                name = tab.name.lower()
                with TabPane(tab.title, id=name), VerticalScroll(id=f"{name}-scroll"):
                    yield Static(id=f"{name}-panel", classes="panel")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        """Draw at once, then keep the data fresh."""
        self.draw()
        self.set_interval(REDRAW_S, self._draw_if_changed)
        self.run_worker(self._poller(), exclusive=True, name="poller")

    def changed(self) -> None:
        """New data arrived outside a poll (a routing decision): draw it soon."""
        self._dirty = True

    def draw(self) -> None:
        """Every panel, the title and the status line, from the dashboard."""
        self._dirty = False
        self.query_one("#title", Static).update(self.dash.title())
        self.query_one("#status", Static).update(self.dash.status_line())
        for tab in Tab:
            title, content = self.dash.panel(tab)
            panel = self.query_one(f"#{tab.name.lower()}-panel", Static)
            panel.border_title = title
            panel.update(content)

    def _draw_if_changed(self) -> None:
        if self._dirty:
            self.draw()

    async def _poller(self) -> None:
        while True:
            try:
                alive = await self.poll()
            except Exception as exc:  # shown on the status line; the dashboard keeps going
                self.dash.status = f"refresh failed: {exc or type(exc).__name__}"
                alive = True
            self.polls += 1
            self.draw()
            if not alive:
                self.exit(1, return_code=1)
                return
            with contextlib.suppress(TimeoutError):  # the refresh period, or `r`
                await asyncio.wait_for(self.refresh_now.wait(), self.interval_s)
            self.refresh_now.clear()

    # -- actions -----------------------------------------------------------------------

    @property
    def tab(self) -> Tab:
        """The tab shown."""
        return TABS[self.query_one(TabbedContent).active]

    def action_show_tab(self, name: str) -> None:
        """Keys 1-6 and ``?``."""
        self.query_one(TabbedContent).active = name

    def action_cycle(self, step: int) -> None:
        """Tab and Shift+Tab: the next or previous tab, wrapping."""
        self.action_show_tab(Tab((self.tab + step) % len(Tab)).name.lower())

    def action_scroll(self, step: int) -> None:
        """j/k: scroll the panel shown."""
        scroll = self.query_one(f"#{self.tab.name.lower()}-scroll", VerticalScroll)
        scroll.scroll_relative(y=step, animate=False)

    def action_refresh_now(self) -> None:
        """r: ask the gateways now."""
        self.refresh_now.set()

    async def action_quit(self) -> None:
        """q, Esc, Ctrl-C."""
        self.exit(0)


def print_frame(dash: Dashboard, tab: Tab | None = None) -> None:
    """One frame of every panel (or of ``tab``), as wide as the terminal (at least 80)."""
    width = max(shutil.get_terminal_size((100, 30)).columns, 80)
    Console(width=width, highlight=False).print(dash.frame([tab] if tab else None))


def main(inv: Invocation) -> int:
    """``fedgate top``."""
    from shared.runtime import run

    return run(top(inv.params))


async def top(params: Params) -> int:
    """Run the dashboard until q/Esc/Ctrl-C (or print one frame with ``--once``)."""
    from shared.connection import connect

    subjects = Subjects()
    dash = Dashboard()
    app: TopApp | None = None
    nc = await connect(nats_config(params))
    try:

        async def on_decision(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                dash.record(json.loads(msg.data))
            if app is not None:
                app.changed()

        await nc.subscribe(subjects.decisions, cb=on_decision)
        await nc.flush()
        tab = TABS[params["tab"]] if params.get("tab") else None
        if params["once"] or not sys.stdout.isatty() or not sys.stdin.isatty():
            await refresh(nc, dash, subjects)
            print_frame(dash, tab)
            return 0

        async def poll() -> bool:
            if nc.is_closed:
                dash.status = "NATS connection closed"
                return False
            await refresh(nc, dash, subjects)
            return True

        app = TopApp(dash, poll, max(params["interval"], 0.2), tab or Tab.CATALOG)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, app.exit)
        try:
            code = await app.run_async()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
        return code or 0
    finally:
        await nc.close()
