"""The fault rounds: what a caller sees through each router when one upstream misbehaves.

Three scenarios, each a closed loop of the in-repo client (``client.py``: it tells a
failed request from a truncated one, which aiperf does not) through every router in
turn, upstream 0 at fault:

- ``kill``: upstream 0 exits abruptly (``die_after``: when it has started its share of a
  third of the requests, so mid-run with streams open whatever the router's speed); it is
  restarted on the same port after the scenario;
- ``errors``: upstream 0 answers ``500`` to every completion;
- ``cut``: upstream 0 drops the connection of every stream after 8 words (or half the
  answer, if shorter).

Counted per router and scenario: client-visible errors (nothing usable), truncated
replies (words then a cut, an error event or too few words), and requests that were ok.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bench.peers import client
from bench.peers.compare import conversations
from bench.peers.fleet import Fleet
from bench.peers.procs import Procs, http_json, wait_until
from bench.peers.routers import API_KEY, MODEL, Router
from bench.peers.upstream import Pace

SCENARIOS = ("kill", "errors", "cut")
CUT_AFTER = 8


def _arm(fleet: Fleet, scenario: str, requests: int, osl: int) -> None:
    if scenario == "kill":
        fleet.set_faults(0, die_after=max(1, requests // (3 * len(fleet.urls))))
    elif scenario == "errors":
        fleet.set_faults(0, fail_rate=1.0)
    elif scenario == "cut":
        fleet.set_faults(0, cut_rate=1.0, cut_after=min(CUT_AFTER, osl // 2))
    else:
        raise ValueError(f"unknown fault scenario {scenario!r}")


def _recover(fleet: Fleet, pace: Pace) -> None:
    """Upstream 0 back and fault-free."""
    if not fleet.owner.alive(fleet.names[0]):
        fleet.restart(0, pace)
        url = fleet.urls[0]
        wait_until(lambda: "requests" in http_json(f"{url}/stats"), 15, f"{url} back")
    fleet.clear_faults()


def fault_rounds(
    routers: list[Router],
    owner: Procs,
    fleet: Fleet,
    pace: Pace,
    requests: int,
    concurrency: int,
    osl: int,
    scenarios: tuple[str, ...] = SCENARIOS,
    between: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """For each scenario and router: errors, truncated and ok counts (and latencies)."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        out[scenario] = {}
        for router in routers:
            _recover(fleet, pace)
            if between is not None:
                between()
            _arm(fleet, scenario, requests, osl)
            convs = conversations(requests, 16, osl)
            outcomes, wall = asyncio.run(
                client.closed_loop(router.urls, API_KEY, MODEL, convs, concurrency, timeout_s=60)
            )
            figures = client.summarize(outcomes, wall)
            out[scenario][router.name] = figures
            print(
                f"  fault {scenario:<6} {router.name:<32} ok {figures['ok']:>4}"
                f"  errors {figures['errors']:>3}  truncated {figures['truncated']:>3}"
                f"  {figures['failures'] or ''}",
                flush=True,
            )
        _recover(fleet, pace)
    return out
