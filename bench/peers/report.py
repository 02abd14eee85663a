"""Tables and targets of a peers run: medians over rounds, ratios taken per round.

A figure is the median of the per-round figures; a difference or ratio against
``direct`` is computed per round (same round, same machine state) and its median taken.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

FEDGATE = "fedgate"
DIRECT = "direct"

COLUMNS = (
    ("ttft_p50_ms", "TTFT p50"),
    ("ttft_p99_ms", "TTFT p99"),
    ("itl_p50_ms", "ITL p50"),
    ("itl_p99_ms", "ITL p99"),
    ("latency_p50_ms", "lat p50"),
    ("latency_p99_ms", "lat p99"),
    ("rps", "req/s"),
    ("cpu_ms_per_req", "CPU ms/req"),
    ("rss_mb", "RSS MB"),
)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(statistics.median(present)), 3) if present else None


def _share(runs: Sequence[dict[str, Any]]) -> list[float]:
    totals = [sum(col) for col in zip(*(r["upstream_requests"] for r in runs), strict=True)]
    whole = sum(totals) or 1
    return [round(100 * t / whole, 1) for t in totals]


def _per_round(
    runs: dict[str, list[dict[str, Any]]], name: str, key: str, op: str
) -> list[float] | None:
    """``name`` vs direct in each round: difference (``-``) or ratio (``/``) of ``key``."""
    if name not in runs or DIRECT not in runs:
        return None
    direct = {r["round"]: r.get(key) for r in runs[DIRECT]}
    out = []
    for r in runs[name]:
        a, b = r.get(key), direct.get(r["round"])
        if a is None or b is None:
            continue
        out.append(round(a - b, 3) if op == "-" else round(a / b, 4) if b else 0.0)
    return out


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per router: the median of each figure, errors summed, shares, deltas to direct."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        s: dict[str, Any] = {key: _median([r.get(key) for r in rs]) for key, _ in COLUMNS}
        s["chunk_gap_p99_ms"] = _median([r.get("chunk_gap_p99_ms") for r in rs])
        s["errors"] = sum(int(r.get("errors") or 0) for r in rs)
        s["ok"] = sum(int(r.get("ok") or 0) for r in rs)
        s["share_pct"] = _share(rs)
        parts = sorted({p for r in rs for p in r.get("cpu_ms_per_req_by_part", {})})
        s["cpu_ms_per_req_by_part"] = {
            p: _median([r["cpu_ms_per_req_by_part"].get(p) for r in rs]) for p in parts
        }
        s["loadavg_1m"] = [r["loadavg"][0] for r in rs]
        added = _per_round(runs, name, "ttft_p50_ms", "-")
        ratio = _per_round(runs, name, "rps", "/")
        s["added_ttft_p50_ms"] = _median(added) if added else None
        s["added_ttft_p50_ms_rounds"] = added
        s["rps_vs_direct"] = _median(ratio) if ratio else None
        s["rps_vs_direct_rounds"] = ratio
        out[name] = s
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def table(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per router."""
    head = ["router", *(label for _, label in COLUMNS), "+TTFT vs direct", "req/s vs direct"]
    head += ["errors", "upstream share %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        row = [name, *(_fmt(s.get(key)) for key, _ in COLUMNS)]
        row += [_fmt(s.get("added_ttft_p50_ms")), _fmt(s.get("rps_vs_direct"))]
        row += [str(s["errors"]), "/".join(f"{x:.0f}" for x in s["share_pct"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _target(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    ok = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {"target": name, "value": value, "op": op, "limit": limit, "met": ok}


def targets(
    runs: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, Any]],
    fault_results: dict[str, dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The issue's targets for fedgate (those whose figures were measured)."""
    out: list[dict[str, Any]] = []
    fed = summary.get(FEDGATE)
    sglang = {n: s for n, s in summary.items() if n.startswith("sglang")}
    if fed and sglang:
        cheapest = min(sglang, key=lambda n: sglang[n]["cpu_ms_per_req"] or 1e9)
        limit = sglang[cheapest]["cpu_ms_per_req"] or 0.0
        gateway_only = fed["cpu_ms_per_req_by_part"].get("gateway")
        out.append(
            _target(
                f"fedgate CPU/req, gateway+nats+workers (ms) <= {cheapest}'s",
                fed["cpu_ms_per_req"], "<=", limit,
            )
        )  # fmt: skip
        out.append(_target(f"gateway process alone CPU/req (ms) <= {cheapest}'s", gateway_only,
                           "<=", limit))  # fmt: skip
    if fed and DIRECT in summary:
        out.append(_target("fedgate added TTFT p50 vs direct (ms)", fed["added_ttft_p50_ms"],
                           "<=", 3.0))  # fmt: skip
        out.append(_target("fedgate req/s / direct req/s", fed["rps_vs_direct"], ">=", 0.99))
    if fault_results:
        bad = 0
        seen = False
        for per_router in fault_results.values():
            f = per_router.get(FEDGATE)
            if f is not None:
                seen = True
                bad += f["errors"] + f["truncated"]
        if seen:
            out.append(_target("fedgate client-visible errors + truncated, fault rounds", bad,
                               "<=", 0))  # fmt: skip
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the targets, met or missed."""
    lines = ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in rows:
        lines.append(
            f"| {t['target']} | {_fmt(t['value'])} | {t['op']} {t['limit']:g} | "
            f"{'met' if t['met'] else 'MISSED'} |"
        )
    return "\n".join(lines)


def fault_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per router, ok / errors / truncated in each fault scenario."""
    routers: list[str] = []
    for per_router in results.values():
        routers += [n for n in per_router if n not in routers]
    head = ["router", *(f"{s}: ok / err / trunc" for s in results)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in routers:
        row = [name]
        for per_router in results.values():
            f = per_router.get(name)
            row.append("–" if f is None else f"{f['ok']} / {f['errors']} / {f['truncated']}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
