"""Plain-text tables for the CLI (no dependency; readable in any terminal or log)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned table with a header rule."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(hd) for hd in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    line = "  ".join(hd.ljust(w) for hd, w in zip(headers, widths, strict=True)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join([line, rule, *body])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def nodes_table(replies: list[dict[str, Any]]) -> str:
    """``fedgate nodes``: one row per node, per gateway that sees it."""
    rows = []
    for reply in replies:
        for n in reply.get("nodes", []):
            models = ",".join(md["model"] for md in n["models"])
            caps = ",".join(sorted({c for md in n["models"] for c in md["capabilities"]}))
            rows.append(
                [
                    reply.get("gateway"),
                    n["node_id"],
                    n["region"],
                    models,
                    caps,
                    n["health"],
                    n["latency_p50_ms"],
                    n["latency_p99_ms"],
                    n["circuit"],
                    f"{n['in_flight']}/{n['capacity']}",
                    n["privacy"],
                    n["heartbeat_age_ms"] and round(n["heartbeat_age_ms"]),
                ]
            )
    if not rows:
        return "no nodes: start one with `fedgate worker --node-id NAME --model M`"
    return table(
        [
            "GATEWAY",
            "NODE",
            "REGION",
            "MODELS",
            "CAPABILITIES",
            "HEALTH",
            "P50 MS",
            "P99 MS",
            "CIRCUIT",
            "LOAD",
            "PRIVACY",
            "HB AGE MS",
        ],
        rows,
    )


def stats_table(replies: list[dict[str, Any]]) -> str:
    """``fedgate stats``: one row per gateway."""
    rows = [
        [
            s.get("gateway"),
            s["total_requests"],
            s["successful_requests"],
            s["failed_requests"],
            s["total_tokens"],
            s["active_streams"],
            s.get("in_flight"),
            s.get("queued"),
            s["avg_latency_ms"],
            s["p50_latency_ms"],
            s["p99_latency_ms"],
            s.get("retries"),
            s.get("failovers"),
            f"{s.get('healthy_nodes')}/{s.get('nodes')}",
        ]
        for s in replies
    ]
    return table(
        [
            "GATEWAY",
            "TOTAL",
            "OK",
            "FAILED",
            "TOKENS",
            "STREAMS",
            "IN FLIGHT",
            "QUEUED",
            "AVG MS",
            "P50 MS",
            "P99 MS",
            "RETRIES",
            "FAILOVERS",
            "HEALTHY",
        ],
        rows,
    )


def route_table(replies: list[dict[str, Any]]) -> str:
    """``fedgate route``: every candidate, its score breakdown and why it won or lost."""
    out = []
    for reply in replies:
        if "error" in reply:
            out.append(f"gateway: {reply['error']}: {reply['message']}")
            continue
        chosen = reply.get("chosen")
        out.append(f"gateway {reply.get('gateway')}: chosen {chosen or 'none'}")
        candidates = reply.get("candidates", [])
        best = max((c["score"] for c in candidates if c["eligible"]), default=None)
        rows = [
            [
                c["node_id"],
                c.get("region"),
                "yes" if c["eligible"] else "no",
                c.get("score"),
                *(c.get("scores", {}).get(k) for k in _SCORE_KEYS),
                verdict(c, chosen, best),
            ]
            for c in candidates
        ]
        head = ["NODE", "REGION", "ELIGIBLE", "SCORE", *(k.upper() for k in _SCORE_KEYS), "WHY"]
        out.append(table(head, rows) if rows else "  no candidates")
    return "\n\n".join(out)


def verdict(candidate: dict[str, Any], chosen: str | None, best: float | None) -> str:
    """Why a candidate won or lost, in a few words."""
    if not candidate["eligible"]:
        return f"rejected: {candidate.get('reason') or 'not eligible'}"
    reason = candidate.get("reason") or ""
    if candidate["node_id"] == chosen:
        return "chosen" + (f": {reason}" if reason else " (best score)")
    if best is not None and candidate["score"] < best:
        return f"lost: score {candidate['score']:.2f} < best {best:.2f}"
    return "lost: tie broken by the strategy" if not reason else f"lost: {reason}"


_SCORE_KEYS = ("health", "latency", "locality", "cost", "load")
