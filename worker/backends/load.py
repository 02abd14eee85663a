"""What a backend with its own queue tells about its load (optional hook ``engine_load``).

A backend may define ``engine_load() -> Load``; the node then reports those counts in
the heartbeat's ``engine`` (source ``worker``) instead of its own job count. The
in-process llama backend does: one generation runs at a time on its thread, the other
jobs wait for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Load:
    """Requests generating now, requests queued, and the KV cache's fill (0..1 or None)."""

    running: int
    waiting: int
    kv_cache_usage: float | None = None


class QueueCounter:
    """Counts jobs queued for and running on a worker thread (safe from any thread).

    ``queued()`` when a job is handed to the thread, ``started()`` when the thread takes
    it, ``finished()`` when it is done with it: every ``queued()`` must be followed by
    ``started()`` and ``finished()``, or by ``dropped()`` if it never ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0

    def queued(self) -> None:
        with self._lock:
            self._waiting += 1

    def dropped(self) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - 1)

    def started(self) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - 1)
            self._running += 1

    def finished(self) -> None:
        with self._lock:
            self._running = max(0, self._running - 1)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) now."""
        with self._lock:
            return self._running, self._waiting
