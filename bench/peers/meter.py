"""CPU time and memory of a router's processes, sampled while a load runs.

A thread reads ``/proc/<pid>/stat`` and ``/proc/<pid>/status`` of each part's processes
every ``interval_s`` (a few reads: negligible next to the load), with wall-clock stamps,
so the CPU spent between two instants (aiperf's own start and end of its profiling phase,
which excludes its ~10 s start-up) is interpolated from the samples around them. A
process that exits (a killed node) keeps its last sampled CPU time.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Self

from bench.common import cpu_seconds
from bench.peers.procs import cpu_of, rss_of


class Meter:
    """Samples CPU seconds and RSS of ``groups`` (part name -> pids) in a thread."""

    def __init__(self, groups: dict[str, list[int]], interval_s: float = 0.1) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self.stamps: list[float] = []
        self.cpu: list[dict[str, float]] = []
        self.rss: list[dict[str, int]] = []
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="meter", daemon=True)

    def _cpu(self, pid: int) -> float:
        """``pid``'s CPU seconds, or its last sampled figure once it has exited."""
        try:
            self._last[pid] = cpu_seconds(pid)
        except (OSError, ValueError):
            pass
        return self._last.get(pid, 0.0)

    def _sample(self) -> None:
        self.cpu.append(
            {part: sum(self._cpu(p) for p in pids) for part, pids in self.groups.items()}
        )
        self.rss.append({part: rss_of(pids) for part, pids in self.groups.items()})
        self.stamps.append(time.time())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _cpu_at(self, t: float, part: str) -> float:
        i = bisect.bisect_left(self.stamps, t)
        if i <= 0:
            return self.cpu[0][part]
        if i >= len(self.stamps):
            return self.cpu[-1][part]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        c0, c1 = self.cpu[i - 1][part], self.cpu[i][part]
        return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)

    def cpu_between(self, start: float | None, end: float | None) -> dict[str, float]:
        """CPU seconds each part spent between two Unix times (None: first/last sample)."""
        t0 = self.stamps[0] if start is None else start
        t1 = self.stamps[-1] if end is None else end
        return {part: self._cpu_at(t1, part) - self._cpu_at(t0, part) for part in self.groups}

    def peak_rss(self) -> dict[str, int]:
        """The largest RSS sampled for each part (bytes)."""
        return {part: max(s[part] for s in self.rss) for part in self.groups}


def settle(groups: dict[str, list[int]], quiet_s: float = 0.01, max_s: float = 10.0) -> float:
    """Wait until the processes together use under ``quiet_s`` CPU seconds per 0.2 s
    (leftovers of one run must not be charged to the next). Returns the seconds waited."""
    pids = [p for ps in groups.values() for p in ps]
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        before = cpu_of(pids)
        time.sleep(0.2)  # a measuring window, not a synchronisation
        if cpu_of(pids) - before < quiet_s:
            break
    return time.monotonic() - started
