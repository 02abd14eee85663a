"""The tables of ``fedgate nodes``, ``stats`` and ``route``, drawn with rich.

Pure: gateway replies (the dicts ``fed.gateway.*`` answer) in, rich renderables out.
States are coloured (healthy green, degraded yellow, unhealthy red ...) on a terminal;
piped output has no colour and is as wide as the table needs (see ``console``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unknown": "dim",
    "closed": "green",
    "half_open": "yellow",
    "open": "red",
    "ready": "green",
    "draining": "yellow",
}
"""Colour of a health, circuit or node state."""

SCORE_KEYS = ("health", "latency", "locality", "cost", "load")
"""The score components ``fedgate route`` shows, in order."""


def fmt(value: Any) -> str:
    """A cell: ``-`` for None, floats with 2 decimals below 10 and 1 above."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


NOT_MEASURED = "–"
"""The latency cells of a node without latency samples yet."""


def latencies(node: dict[str, Any]) -> tuple[str, str]:
    """P50 and P99 cells: ``NOT_MEASURED`` while the gateway has no sample of the node.

    The reply carries no sample count (and ``--json`` stays as it is), but a gateway's
    percentiles are exactly 0.0 only for an empty window (gateway/latency.py), so two
    zeros read "not measured yet", not "fast"."""
    p50, p99 = node.get("latency_p50_ms"), node.get("latency_p99_ms")
    if not p50 and not p99:
        return NOT_MEASURED, NOT_MEASURED
    return fmt(p50), fmt(p99)


def state(text: Any) -> Text:
    """A state word in its colour."""
    return Text(str(text), style=STATE_STYLE.get(str(text), ""))


def table(headers: Sequence[str], numeric: Sequence[str] = ()) -> Table:
    """A borderless table with a rule under its bold header; ``numeric`` columns right."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        t.add_column(header, justify="right" if header in numeric else "left")
    return t


def nodes_table(replies: list[dict[str, Any]]) -> RenderableType:
    """``fedgate nodes``: one row per node, per gateway that sees it."""
    t = table(
        ["GATEWAY", "NODE", "REGION", "MODELS", "CAPABILITIES", "HEALTH", "TTFT P50 MS",
         "TTFT P99 MS", "TPOT MS", "CIRCUIT", "LOAD", "PRIVACY", "HB AGE MS"],
        numeric=["TTFT P50 MS", "TTFT P99 MS", "TPOT MS", "LOAD", "HB AGE MS"],
    )  # fmt: skip
    for reply in replies:
        for n in reply.get("nodes", []):
            age = n["heartbeat_age_ms"]
            t.add_row(
                fmt(reply.get("gateway")),
                n["node_id"],
                n["region"],
                ",".join(md["model"] for md in n["models"]),
                ",".join(sorted({c for md in n["models"] for c in md["capabilities"]})),
                state(n["health"]),
                *latencies(n),
                fmt(n.get("tpot_p50_ms")) if n.get("tpot_p50_ms") is not None else NOT_MEASURED,
                state(n["circuit"]),
                f"{n['in_flight']}/{n['capacity']}",
                n["privacy"],
                fmt(age and round(age)),
            )
    if not t.row_count:
        return Text("no nodes: start one with `fedgate worker --node-id NAME --model M`")
    return t


def stats_table(replies: list[dict[str, Any]]) -> RenderableType:
    """``fedgate stats``: one row per gateway."""
    headers = ["GATEWAY", "TOTAL", "OK", "FAILED", "TOKENS", "STREAMS", "IN FLIGHT", "QUEUED",
               "AVG MS", "P50 MS", "P99 MS", "RETRIES", "FAILOVERS", "HEALTHY"]  # fmt: skip
    t = table(headers, numeric=headers[1:])
    for s in replies:
        if "error" in s:
            continue
        t.add_row(
            *map(fmt, [s.get("gateway"), s["total_requests"], s["successful_requests"]]),
            Text(fmt(s["failed_requests"]), style="red" if s["failed_requests"] else ""),
            *map(fmt, [s["total_tokens"], s["active_streams"], s.get("in_flight")]),
            *map(fmt, [s.get("queued"), s["avg_latency_ms"], s["p50_latency_ms"]]),
            *map(fmt, [s["p99_latency_ms"], s.get("retries"), s.get("failovers")]),
            f"{s.get('healthy_nodes')}/{s.get('nodes')}",
        )
    errors = [_error_line(s) for s in replies if "error" in s]
    parts: list[RenderableType] = [t]
    limits = [
        (s.get("gateway"), x) for s in replies if "error" not in s for x in s.get("limits", [])
    ]
    if limits:
        cols = ["GATEWAY", "TENANT", "LIMIT", "MAX", "USED", "HELD", "REFUSED"]
        lt = table(cols, numeric=cols[3:])
        for gw, x in limits:
            lt.add_row(*map(fmt, [gw, x["tenant"], x["limit"], x["max"], x["used"], x["held"]]),
                       Text(fmt(x["refused"]), style="red" if x["refused"] else ""))  # fmt: skip
        parts += [Text(), lt]
    return Group(*parts, *errors) if len(parts) > 1 or errors else t


def route_table(replies: list[dict[str, Any]]) -> RenderableType:
    """``fedgate route``: every candidate, its score breakdown and why it won or lost."""
    parts: list[RenderableType] = []
    for i, reply in enumerate(replies):
        if i:
            parts.append(Text())
        if "error" in reply:
            parts.append(_error_line(reply))
            continue
        chosen = reply.get("chosen")
        parts.append(
            Text.assemble(
                "gateway ",
                (str(reply.get("gateway")), "bold"),
                ": chosen ",
                (chosen or "none", "green" if chosen else "red"),
            )
        )
        candidates = reply.get("candidates", [])
        if not candidates:
            parts.append(Text("  no candidates"))
            continue
        best = max((c["score"] for c in candidates if c["eligible"]), default=None)
        heads = [k.upper() for k in SCORE_KEYS]
        terms = ["CACHE", "RUN/WAIT/KV", "TTFT~MS"]  # the prefix/SLO stage (issue 14)
        t = table(
            ["NODE", "REGION", "ELIGIBLE", "SCORE", *heads, *terms, "WHY"],
            ["SCORE", *heads, *terms],
        )
        for c in candidates:
            why = verdict(c, chosen, best)
            style = "green" if why.startswith("chosen") else "red" if not c["eligible"] else ""
            t.add_row(
                c["node_id"],
                fmt(c.get("region")),
                "yes" if c["eligible"] else "no",
                fmt(c.get("score")),
                *(fmt(c.get("scores", {}).get(k)) for k in SCORE_KEYS),
                fmt(c.get("cache_match")),
                engine_cell(c),
                fmt(c.get("predicted_ttft_ms")),
                Text(why, style=style),
            )
        parts.append(Text())
        parts.append(t)
    return Group(*parts)


def engine_cell(candidate: dict[str, Any]) -> str:
    """``running/waiting/kv%`` of a candidate's engine signals, ``-`` when it has none."""
    if candidate.get("running") is None:
        return "-"
    kv = candidate.get("kv_cache_usage")
    kv_text = "-" if kv is None else f"{kv:.0%}"
    return f"{candidate['running']}/{candidate.get('waiting', 0)}/{kv_text}"


def verdict(candidate: dict[str, Any], chosen: str | None, best: float | None) -> str:
    """Why a candidate won or lost, in a few words."""
    if not candidate["eligible"]:
        return f"rejected: {candidate.get('reason') or 'not eligible'}"
    reason = candidate.get("reason") or ""
    if candidate["node_id"] == chosen:
        if reason:
            return f"chosen: {reason}"
        if best is not None and candidate["score"] < best:
            return "chosen by the strategy (prefix cache, load or SLO)"
        return "chosen (best score)"
    if best is not None and candidate["score"] < best:
        return f"lost: score {candidate['score']:.2f} < best {best:.2f}"
    return f"lost: {reason}" if reason else "lost: the strategy chose another"


def _error_line(reply: dict[str, Any]) -> Text:
    return Text.assemble(
        f"gateway {reply.get('gateway') or ''}".rstrip() + ": ",
        (f"{reply['error']}: {reply['message']}", "red"),
    )


def console(file: TextIO | None = None, width: int | None = None) -> Console:
    """A console on ``file`` (stdout): the terminal's, or without colour when piped."""
    return Console(file=file or sys.stdout, width=width, highlight=False)


def show(renderable: RenderableType, file: TextIO | None = None) -> None:
    """Print ``renderable``: fitted to a terminal; at its natural width otherwise.

    Piped output is for grep and awk: a row is never folded over two lines, and lines
    carry no trailing blanks.
    """
    out = console(file)
    if out.is_terminal:
        out.print(renderable)
        return
    natural = Measurement.get(out, out.options.update(width=10_000), renderable).maximum
    out = console(file, width=max(natural, 80))
    with out.capture() as captured:
        out.print(renderable)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
