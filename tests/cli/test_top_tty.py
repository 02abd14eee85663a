"""``fedgate top`` (textual) on a real terminal, a pseudo-terminal: draws, switches tabs, quits."""

from __future__ import annotations

import os
import pty
import select
import signal
import struct
import sys
import time

from tests.cli.util import wait_for_nodes
from tests.helpers import Proc, processes


class Terminal:
    """``fedgate top`` running on a 100x30 pseudo-terminal."""

    def __init__(self, url: str) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: become fedgate top on the terminal
            os.execv(sys.executable, [sys.executable, "-m", "fedgate", "top", "--nats", url,
                                      "--interval", "0.3"])  # fmt: skip
        import fcntl
        import termios

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.pid, self.fd, self.screen = pid, fd, ""

    def expect(self, text: str, timeout: float = 20.0) -> None:
        """Read the terminal until ``text`` appears."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not on screen:\n{self.screen[-2000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.screen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        assert text in self.screen

    def press(self, key: bytes) -> None:
        self.screen = ""
        os.write(self.fd, key)

    def exit_code(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_data = select.select([self.fd], [], [], 0.1)[0]
            if with_data:
                try:
                    self.screen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("fedgate top did not exit")


async def test_top_draws_switches_tabs_and_quits(nats_url: str) -> None:
    with processes() as procs:
        procs.append(Proc("gateway", "--nats", nats_url, "--gateway-id", "gw-t"))
        procs.append(Proc("worker", "--nats", nats_url, "--node-id", "w-t"))
        await wait_for_nodes(nats_url, "w-t")
        for quit_key in (b"q", b"\x1b", b"\x03"):  # q, Esc, Ctrl-C (SIGINT from the tty)
            term = Terminal(nats_url)
            term.expect("MODEL CATALOG")
            term.expect("w-t")
            term.press(b"2")
            term.expect("NODE HEALTH")
            term.press(b"\t")
            term.expect("ROUTING DECISIONS")
            term.press(b"?")
            term.expect("Keyboard Shortcuts")
            term.press(quit_key)
            assert term.exit_code() == 0, quit_key
            assert "\x1b[?1049l" in term.screen  # the normal screen is back
