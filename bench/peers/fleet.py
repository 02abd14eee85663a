"""The N fake upstreams every router fronts: started, counted, faulted, killed.

Each upstream is its own process (``python -m bench.peers.upstream --port 0``, the port
read from its ``READY`` line), so one can die without the others.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from bench.peers.procs import Procs, http_json
from bench.peers.upstream import Pace

STARTUP_S = 15.0


@dataclass(slots=True)
class Fleet:
    """The upstreams of a run (``names[i]`` serves ``urls[i]``)."""

    owner: Procs
    names: list[str]
    urls: list[str]

    def stats(self) -> list[dict[str, Any]]:
        """Each upstream's counters (an empty dict for one that is down)."""
        out: list[dict[str, Any]] = []
        for name, url in zip(self.names, self.urls, strict=True):
            if not self.owner.alive(name):
                out.append({})
                continue
            try:
                out.append(http_json(f"{url}/stats", timeout=5.0))
            except OSError:
                out.append({})
        return out

    def requests(self) -> list[int]:
        """Completions each upstream has started so far."""
        return [s.get("requests", 0) for s in self.stats()]

    def set_faults(self, index: int, **faults: Any) -> None:
        """Set upstream ``index``'s faults (see ``upstream.Faults``); none clears them."""
        http_json(f"{self.urls[index]}/admin/faults", faults, timeout=5.0)

    def clear_faults(self) -> None:
        """No fault anywhere."""
        for i, name in enumerate(self.names):
            if self.owner.alive(name):
                self.set_faults(i)

    def kill(self, index: int) -> None:
        """SIGKILL upstream ``index`` (a crash)."""
        self.owner.kill(self.names[index])

    def restart(self, index: int, pace: Pace) -> None:
        """Start upstream ``index`` again, on its old port."""
        name, url = self.names[index], self.urls[index]
        port = int(url.rsplit(":", 1)[1])
        self.owner.procs.pop(name, None)
        _spawn(self.owner, name, port, pace)


def _spawn(owner: Procs, name: str, port: int, pace: Pace, model: str = "bench") -> str:
    proc = owner.spawn(
        name,
        [sys.executable, "-m", "bench.peers.upstream", "--port", str(port), "--model", model,
         "--ttft-ms", str(pace.ttft_ms), "--itl-ms", str(pace.itl_ms),
         "--output-tokens", str(pace.output_tokens)],
        stdout_pipe=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()  # READY <port>, printed once listening
    if not line.startswith("READY "):
        raise RuntimeError(f"upstream {name} did not start (log: {owner.log_dir}/{name}.log)")
    return f"http://127.0.0.1:{line.split()[1]}"


def start(owner: Procs, n: int, pace: Pace, model: str = "bench") -> Fleet:
    """Start ``n`` upstreams on OS-chosen ports."""
    names = [f"upstream{i}" for i in range(n)]
    urls = [_spawn(owner, name, 0, pace, model) for name in names]
    return Fleet(owner, names, urls)
