"""``fedgate top``: a live terminal dashboard of the federation (standard library only).

Refreshes from the control subjects (``fed.gateway.nodes`` / ``stats``, answered by
every gateway) and follows ``fed.decisions``. Interactive mode draws with ANSI codes on
the alternate screen with the terminal in cbreak mode (keys arrive one by one, Ctrl-C
still raises SIGINT); ``--once``, or a stdout that is not a terminal, prints one frame
of every panel and exits. The drawing itself is pure: see ``fedgate.panels``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator

from nats.aio.client import Client
from nats.aio.msg import Msg

from fedgate.cli import nats_config
from fedgate.commands import gather_on
from fedgate.panels import Dashboard, Tab, ansi
from shared.connection import connect
from shared.subjects import Subjects

_TABS = {
    "catalog": Tab.CATALOG,
    "health": Tab.HEALTH,
    "routing": Tab.ROUTING,
    "circuits": Tab.CIRCUITS,
    "stats": Tab.STATS,
    "policies": Tab.POLICIES,
}

ESC = "\x1b"


async def refresh(nc: Client, dash: Dashboard, subjects: Subjects) -> None:
    """Ask every gateway for its nodes and stats (both at once) and update the dashboard."""
    nodes, stats = await asyncio.gather(
        gather_on(nc, subjects.gateway_nodes), gather_on(nc, subjects.gateway_stats)
    )
    dash.update(nodes, stats, asyncio.get_running_loop().time())
    dash.status = "" if stats else "no gateway answers"


async def top(args: argparse.Namespace) -> int:
    """Run the dashboard until ``q``/Esc/Ctrl-C (or print one frame with ``--once``)."""
    subjects = Subjects()
    dash = Dashboard(tab=_TABS.get(args.tab or "", Tab.CATALOG))
    nc = await connect(nats_config(args))
    try:

        async def on_decision(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                dash.record(json.loads(msg.data))

        await nc.subscribe(subjects.decisions, cb=on_decision)
        await nc.flush()
        if args.once or not sys.stdout.isatty() or not sys.stdin.isatty():
            await refresh(nc, dash, subjects)
            width = max(shutil.get_terminal_size((100, 30)).columns, 80)
            tabs = [_TABS[args.tab]] if args.tab else None
            print("\n".join(dash.frame_all(width, tabs)))
            return 0
        await _interactive(nc, dash, subjects, max(args.interval, 0.2))
        return 0
    finally:
        await nc.close()


async def _interactive(nc: Client, dash: Dashboard, subjects: Subjects, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    dirty = asyncio.Event()
    quit_ = asyncio.Event()
    refresh_now = asyncio.Event()
    fd = sys.stdin.fileno()

    def on_key() -> None:
        action = _handle_key(dash, os.read(fd, 64).decode(errors="replace"))
        if action == "quit":
            quit_.set()
        elif action == "refresh":
            refresh_now.set()
        dirty.set()

    def on_quit() -> None:
        quit_.set()
        dirty.set()

    async def refresher() -> None:
        while True:
            try:
                await refresh(nc, dash, subjects)
            except Exception as exc:  # shown on the status line; the dashboard keeps going
                dash.status = f"refresh failed: {exc or type(exc).__name__}"
            dirty.set()
            if nc.is_closed:
                dash.status = "NATS connection closed"
                on_quit()
                return
            with contextlib.suppress(TimeoutError):  # the refresh period, or `r`
                await asyncio.wait_for(refresh_now.wait(), interval_s)
            refresh_now.clear()

    with _terminal(fd):
        loop.add_reader(fd, on_key)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_quit)
        loop.add_signal_handler(signal.SIGWINCH, dirty.set)
        task = asyncio.create_task(refresher())
        try:
            while not quit_.is_set():
                await dirty.wait()
                dirty.clear()
                _draw(dash)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            loop.remove_reader(fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGWINCH):
                loop.remove_signal_handler(sig)


def _handle_key(dash: Dashboard, data: str) -> str | None:
    """Apply one read of key presses; returns ``"quit"``, ``"refresh"`` or None."""
    if data in ("q", "Q", ESC, "\x03"):
        return "quit"
    if data == "\t":
        dash.next_tab()
    elif data == f"{ESC}[Z":  # Shift+Tab
        dash.next_tab(-1)
    elif data in ("j", f"{ESC}[B"):
        dash.scroll += 1
    elif data in ("k", f"{ESC}[A"):
        dash.scroll = max(dash.scroll - 1, 0)
    elif data == "?":
        dash.select_tab(Tab.HELP)
    elif data == "r":
        return "refresh"
    elif len(data) == 1 and "1" <= data <= "6":
        dash.select_tab(Tab.from_index(int(data) - 1))
    return None


def _draw(dash: Dashboard) -> None:
    size = shutil.get_terminal_size((100, 30))
    lines = dash.frame(max(size.columns, 40), max(size.lines, 10), ansi)
    sys.stdout.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\x1b[J")
    sys.stdout.flush()


@contextlib.contextmanager
def _terminal(fd: int) -> Iterator[None]:
    """Cbreak mode on the alternate screen, cursor hidden; everything restored on exit."""
    saved = termios.tcgetattr(fd)
    sys.stdout.write("\x1b[?1049h\x1b[?25l")
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write("\x1b[?25h\x1b[?1049l")
        sys.stdout.flush()
