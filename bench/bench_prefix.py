"""Prefix-cache awareness benchmark: block hashing, the prefix index, the wire event, the
cost model (gateway/prefix.py, prefix_index.py, prefix_cost.py; issue 14, point 2).

Run: ``python -m bench.bench_prefix [--nodes N] [--blocks-per-node B] [--calls C]
[--repeat R] [--quick]`` (~1 min a repeat; ``--quick``: 200 nodes, 2,000 calls; a shared
machine is noisy: ``--repeat 3`` shows the median of three). Pure CPU, one process, no
NATS. Figures, in µs, p50 / p99 over ``--calls`` calls with the GC off:

* ``hash_4k`` / ``hash_32k``: ``block_hashes`` of a 4 KB / 32 KB prompt (16 / 128 keys);
  ``hash_*_fresh``: the same number of keys chained with a fresh ``blake2b(prev ||
  block)`` per block (the alternative), call for call interleaved with the first;
  ``chat_4k``: render and hash a 4 KB chat.
* ``match_*`` on an index of ``--nodes`` nodes x ``--blocks-per-node`` keys each (default
  1,000 x 1,000 = 1 M entries), built from multi-turn chats (2-5 turns of 1-8 KB) on 20
  shared 1 KB system prompts, so every system prompt is held by most nodes:
  ``match_typical`` the call for a 4 KB prompt extending one node's conversation;
  ``match_typical_10`` the call and the matched fraction of 10 candidates (what a
  router does; the target); ``match_typical_full`` the call and the whole answer as a
  dict (an entry per node holding the system prompt); ``match_nodes_10`` the same 10
  through ``match_nodes``; ``match_miss`` a prompt no node holds; ``match_hot*`` the same
  with one system prompt every node holds (after a record of it on each).
* ``record_4k`` / ``record_32k``: recording a new prompt into the full index (global
  eviction running: every new entry evicts one).
* ``event_*``: an ``ObservedPrefix`` of 128 keys: encode, decode, bytes.
* ``score_10``: ``score_candidates`` over 10 candidates.
* ``bytes_per_entry``: index memory per (node, key) entry, by tracemalloc on 100 x 1,000.

Prints the figures, then as its last line one JSON object (µs; ``machine`` as in the
other benchmarks). Target: ``match_typical_10`` p50 <= 20 µs at 1,000 nodes.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

from gateway.prefix import (
    ObservedPrefix,
    block_hashes,
    chat_block_hashes,
    decode_observed,
    encode_observed,
)
from gateway.prefix_cost import PrefixCandidate, score_candidates
from gateway.prefix_index import PrefixIndex

MATCH_P50_MAX_US = 20.0
N_SYSTEMS = 20


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(calls: int, fn: Callable[[int], Any]) -> dict[str, float]:
    """p50 / p99 in µs of ``fn(i)`` for i in range(calls), the GC off."""
    samples: list[float] = []
    gc.disable()
    try:
        for i in range(calls):
            t0 = time.perf_counter_ns()
            fn(i)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return {"p50_us": round(pct(samples, 0.5), 2), "p99_us": round(pct(samples, 0.99), 2)}


def _corpus(rng: random.Random, n_bytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < n_bytes:
        w = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


CORPUS = _corpus(random.Random(0), 1 << 20)


def timed_pair(
    calls: int, fn_a: Callable[[int], Any], fn_b: Callable[[int], Any]
) -> tuple[dict[str, float], dict[str, float]]:
    """``timed`` of two functions, call for call interleaved."""
    a: list[float] = []
    b: list[float] = []
    gc.disable()
    try:
        for i in range(calls):
            t0 = time.perf_counter_ns()
            fn_a(i)
            t1 = time.perf_counter_ns()
            fn_b(i)
            b.append((time.perf_counter_ns() - t1) / 1000)
            a.append((t1 - t0) / 1000)
    finally:
        gc.enable()
    return tuple(  # type: ignore[return-value]
        {"p50_us": round(pct(x, 0.5), 2), "p99_us": round(pct(x, 0.99), 2)} for x in (a, b)
    )


def _hash_once(fn: Callable[[bytes], list[int]], data: bytes, _: int) -> list[int]:
    return fn(data)


def words(rng: random.Random, n_bytes: int) -> str:
    """``n_bytes`` of random lowercase words (a slice of one 1 MB corpus at a random
    offset: two slices share no leading block unless they start at the same offset)."""
    at = rng.randrange(len(CORPUS) - n_bytes)
    return CORPUS[at : at + n_bytes]


def fresh_chain(data: bytes, block: int = 256) -> list[int]:
    """The alternative: one new BLAKE2b per block over the previous key and the block."""
    out: list[int] = []
    prev = b"\0" * 8
    for i in range(0, len(data) - len(data) % block, block):
        prev = hashlib.blake2b(prev + data[i : i + block], digest_size=8).digest()
        out.append(int.from_bytes(prev, "little"))
    return out


def chat(system: str, turns: list[str]) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": "system", "content": system}] + [
        {"role": roles[i % 2], "content": t} for i, t in enumerate(turns)
    ]


class Fleet:
    """An index over ``nodes`` nodes, each holding about ``per_node`` keys of its own
    conversations (each on one of the shared system prompts)."""

    def __init__(self, nodes: int, per_node: int, rng: random.Random) -> None:
        self.systems = [words(rng, 1024) for _ in range(N_SYSTEMS)]
        self.index = PrefixIndex(max_entries=nodes * per_node, max_blocks_per_node=per_node)
        self.ids = [f"node-{i}" for i in range(nodes)]
        self.convs: list[tuple[str, list[dict[str, str]]]] = []
        now = 0.0
        for nid in self.ids:
            held = 0
            while held < per_node:
                system = rng.choice(self.systems)
                turns = [words(rng, rng.randint(1_000, 8_000)) for _ in range(rng.randint(2, 5))]
                keys = chat_block_hashes(chat(system, turns))
                self.index.record(nid, keys, now)
                held += len(keys)
                now += 1e-4
            self.convs.append((nid, chat(system, turns)))
        self.now = now


def bench_index(nodes: int, per_node: int, calls: int, rng: random.Random) -> dict[str, Any]:
    """The ``match_*`` and ``record_*`` figures on a fleet's index."""
    t0 = time.monotonic()
    fleet = Fleet(nodes, per_node, rng)
    ix, now = fleet.index, fleet.now
    build_s = time.monotonic() - t0
    res: dict[str, Any] = {}
    res["index"] = {
        "nodes": len(ix.nodes),
        "entries": len(ix),
        "distinct_keys": len(ix._holders),
        "build_s": round(build_s, 1),
    }
    # typical: a next turn of one node's conversation, cut to 4 KB
    probes = []
    for nid, conv in rng.sample(fleet.convs, min(200, len(fleet.convs))):
        keys = chat_block_hashes([*conv, {"role": "user", "content": words(rng, 300)}])
        probes.append((nid, keys[:16]))
    got = ix.match(probes[0][1], now)
    assert got.depth(probes[0][0]) == 16, got
    res["index"]["holders_of_a_system_prompt"] = len(got)
    cands = [[*rng.sample(fleet.ids, 9), nid] for nid, _ in probes]

    def route10(keys: list[int], among: list[str]) -> list[float]:
        m = ix.match(keys, now)  # what a router does: match, then read its candidates
        return m.fractions(among)

    k = len(probes)
    res["match_typical"] = timed(calls, lambda i: ix.match(probes[i % k][1], now))
    res["match_typical_10"] = timed(calls, lambda i: route10(probes[i % k][1], cands[i % k]))
    res["match_typical_full"] = timed(
        calls // 4, lambda i: ix.match(probes[i % k][1], now).as_dict()
    )
    res["match_typical_full"]["nodes_in_answer"] = len(got)
    res["match_nodes_10"] = timed(
        calls, lambda i: ix.match_nodes(probes[i % k][1], cands[i % k], now)
    )
    cold = [block_hashes(words(rng, 4096)) for _ in range(50)]
    res["match_miss"] = timed(calls, lambda i: ix.match(cold[i % 50], now))
    # hot: one system prompt on every node (its 4 blocks), then one node's conversation
    hot_sys = words(rng, 1024)
    hot_keys = chat_block_hashes(chat(hot_sys, [words(rng, 3072)]))[:16]
    for nid in fleet.ids:
        ix.record(nid, hot_keys[:4], now)
    ix.record(fleet.ids[0], hot_keys, now)
    got = ix.match(hot_keys, now)
    assert len(got) == len(fleet.ids) and got[fleet.ids[0]] == len(hot_keys)
    res["match_hot"] = timed(calls, lambda i: ix.match(hot_keys, now))
    res["match_hot_10"] = timed(calls, lambda i: route10(hot_keys, cands[i % k]))
    res["match_hot_full"] = timed(calls // 4, lambda i: ix.match(hot_keys, now).as_dict())
    res["match_hot_full"]["nodes_in_answer"] = len(got)

    new4 = [block_hashes(words(rng, 4096)) for _ in range(500)]
    new32 = [block_hashes(words(rng, 32768)) for _ in range(100)]
    res["record_4k"] = timed(
        len(new4), lambda i: ix.record(fleet.ids[i % len(fleet.ids)], new4[i], now)
    )
    res["record_32k"] = timed(
        len(new32), lambda i: ix.record(fleet.ids[i % len(fleet.ids)], new32[i], now)
    )
    assert len(ix) <= ix.max_entries

    return res


def run_once(nodes: int, per_node: int, calls: int) -> dict[str, Any]:
    """Every timed figure, once."""
    rng = random.Random(1)
    res: dict[str, Any] = {}
    prompt4, prompt32 = words(rng, 4096).encode(), words(rng, 32768).encode()
    assert len(fresh_chain(prompt32)) == len(block_hashes(prompt32)) == 128
    for name, data, n in (("hash_4k", prompt4, calls), ("hash_32k", prompt32, calls // 4)):
        # the two ways, call for call interleaved (a shared machine drifts)
        res[name], res[name + "_fresh"] = timed_pair(
            n, partial(_hash_once, block_hashes, data), partial(_hash_once, fresh_chain, data)
        )
    chat4 = chat(words(rng, 1024), [words(rng, 1536), words(rng, 1536)])
    res["chat_4k"] = timed(calls, lambda i: chat_block_hashes(chat4))

    res.update(bench_index(nodes, per_node, calls, rng))

    event = ObservedPrefix(node_id="node-17", blocks=block_hashes(prompt32), at_s=time.time())
    raw = encode_observed(event)
    res["event_encode_128"] = timed(calls, lambda i: encode_observed(event))
    res["event_decode_128"] = timed(calls, lambda i: decode_observed(raw))
    res["event_bytes_128"] = len(raw)

    ten = [PrefixCandidate(f"n{i}", rng.random(), rng.random() * 1.2) for i in range(10)]
    res["score_10"] = timed(calls, lambda i: score_candidates(ten, 1000.0))
    return res


def bytes_per_entry() -> int:
    """Index memory per entry: tracemalloc around building a 100 x 1,000 index."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    small = Fleet(100, 1000, random.Random(2)).index
    gc.collect()  # the Fleet's own prompts are garbage by now; what is left is the index
    per = round((tracemalloc.get_traced_memory()[0] - before) / len(small))
    tracemalloc.stop()
    return per


def main() -> None:
    """Run every figure (``--repeat`` times: medians), print them and a final JSON line."""
    p = argparse.ArgumentParser(description="prefix hashing, index and cost model cost")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--blocks-per-node", type=int, default=1000)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=1, help="runs; the median of each figure")
    p.add_argument("--quick", action="store_true", help="200 nodes, 2,000 calls")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.calls = 200, 2000
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {os.cpu_count()} cores, load {load_before}", flush=True)
    runs = [run_once(args.nodes, args.blocks_per_node, args.calls) for _ in range(args.repeat)]
    res: dict[str, Any] = runs[0]
    for key, val in res.items():
        if isinstance(val, dict) and "p50_us" in val:
            for q in ("p50_us", "p99_us"):
                val[q] = round(statistics.median(run[key][q] for run in runs), 2)
    res["bytes_per_entry"] = bytes_per_entry()
    target_ok = res["match_typical_10"]["p50_us"] <= MATCH_P50_MAX_US
    res["targets"] = {
        "match_typical_10_p50_us": {
            "value": res["match_typical_10"]["p50_us"],
            "op": "<=",
            "limit": MATCH_P50_MAX_US,
            "pass": target_ok,
        }
    }
    res["machine"] = {
        "nproc": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "repeat": args.repeat,
    }

    print(f"index: {res['index']}")
    print(f"{'figure':<20} {'p50 µs':>8} {'p99 µs':>8}")
    for key, val in res.items():
        if isinstance(val, dict) and "p50_us" in val:
            extra = {k: v for k, v in val.items() if not k.endswith("_us")}
            print(f"{key:<20} {val['p50_us']:>8.2f} {val['p99_us']:>8.2f}  {extra or ''}")
    print(f"event of 128 keys: {res['event_bytes_128']} bytes")
    print(f"index memory: {res['bytes_per_entry']} bytes per entry")
    print(
        f"target match_typical_10 p50: {res['match_typical_10']['p50_us']:.2f} µs <= "
        f"{MATCH_P50_MAX_US:g} µs  {'PASS' if target_ok else 'MISS'}"
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
