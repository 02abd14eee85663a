"""The router's prefix/SLO stage (gateway/affinity.py) and engine-aware load, on a fake
clock: warm idle beats cold idle, cold idle beats warm overloaded, an engine's queue
shifts traffic, stale engine signals are ignored, SLO admission, explain terms."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from gateway.prefix import ObservedPrefix
from gateway.prefix_index import apply_observed
from gateway.router import LoadBalanceStrategy, RouterConfig
from shared.errors import SloUnattainable, SloUnmet
from shared.messages import EngineSignals, InferRequest, QoS
from tests.core.util import World, hb

SYSTEM = "You are a careful assistant. " * 80  # ~2.3 KB: 9 blocks of 256 bytes


def world(n: int = 2, **hb_kw: Any) -> World:
    w = World(RouterConfig(strategy=LoadBalanceStrategy.POWER_OF_TWO, seed=7))
    for i in range(n):
        w.catalog.apply_heartbeat(f"n{i}", hb(capacity=4, **hb_kw))
        w.healthy(f"n{i}", 0.05)
    return w


def ask(text: str, rid: str = "r1", **qos: Any) -> InferRequest:
    return InferRequest(
        capability="generate", model="m", input=text, request_id=rid, qos=QoS(**qos)
    )


def engine(**kw: Any) -> EngineSignals:
    """Signals read from an engine's /metrics (vLLM here), measured now."""
    kw.setdefault("source", "vllm")
    return EngineSignals(measured_at=int(time.time() * 1000), **kw)


def test_an_engine_count_is_load_only_beyond_the_counted_requests() -> None:
    """The engine's running + waiting counts only beyond the heartbeat's in-flight (or
    this gateway's peak): the requests the gateway counts itself, and more freshly (a
    stale snapshot of them herded traffic), are not load again."""
    w = world()
    w.catalog.apply_heartbeat(
        "n1", hb(capacity=4, in_flight=4, engine=engine(running=4, source="worker"))
    )
    node = w.catalog.node("n1")
    assert node is not None and node.engine_load == 0.0 and node.load == 1.0  # 4 of 4, once
    for _ in range(4):
        w.catalog.add_in_flight("n1", 1)  # this gateway's 4 are on their way back
    w.catalog.apply_heartbeat("n1", hb(capacity=4, in_flight=1, engine=engine(running=6)))
    assert node.engine_load == pytest.approx(0.5)  # 2 of another client, beyond our 4
    for _ in range(4):
        w.catalog.add_in_flight("n1", -1)
    assert node.load == pytest.approx(0.5)  # not the snapshot's 6 of 4 (1.5)


def routes(w: World, request_of: Any, n: int = 60) -> Counter[str]:
    """Where ``n`` requests go, each recorded in the index as Fleet.route does, then
    dispatched and answered (Fleet.hold and release: the in-flight count)."""
    out: Counter[str] = Counter()
    for i in range(n):
        request = request_of(i)
        chosen = w.router.route(request)
        w.router.affinity.routed(request, chosen)
        w.catalog.add_in_flight(chosen.node_id, 1)
        w.catalog.add_in_flight(chosen.node_id, -1)
        out[chosen.node_id] += 1
    return out


def test_cold_prompts_spread_and_a_conversation_sticks() -> None:
    w = world()
    cold = routes(w, lambda i: ask(f"{i} unrelated prompt " * 40, f"c{i}"))
    assert min(cold.values()) >= 15, cold  # no shared prefix: POWER_OF_TWO spreads
    turns = routes(w, lambda i: ask(SYSTEM + " user turn" * i, f"t{i}"), 30)
    assert max(turns.values()) == 30, turns  # one node holds the system prompt: it stays


def test_warm_idle_beats_cold_idle() -> None:
    w = world()
    w.router.affinity.routed(ask(SYSTEM), w.router.route(ask("short")))
    warm = w.router.prefixes.nodes[0]
    for i in range(20):
        c = w.router.route(ask(SYSTEM + f" question {i}", f"q{i}"))
        assert c.node_id == warm
        assert c.scores.cache > 0.8
        assert c.scores.ttft_ms >= 0


def test_cold_idle_beats_warm_overloaded() -> None:
    w = world()
    w.router.prefixes.record("n1", w.router.affinity.hashes(ask(SYSTEM)), w.clock())
    w.catalog.apply_heartbeat("n1", hb(capacity=4, in_flight=3))  # load 0.75 vs 0.0
    got = Counter(w.router.route(ask(SYSTEM + f" q{i}", f"q{i}")).node_id for i in range(20))
    assert got == Counter({"n0": 20})
    w.catalog.apply_heartbeat("n1", hb(capacity=4, in_flight=0))  # idle again: warm wins
    assert w.router.route(ask(SYSTEM + " again")).node_id == "n1"


def test_overload_guard_withholds_a_big_hit_from_a_busy_node() -> None:
    w = world()
    long_prompt = SYSTEM * 18  # ~41 KB: ~10 K tokens, 2 s of uncached prefill at 0.2 ms
    w.router.prefixes.record("n1", w.router.affinity.hashes(ask(long_prompt)), w.clock())
    w.catalog.apply_heartbeat("n1", hb(capacity=4, in_flight=1))  # load 0.25: worth a hit
    assert w.router.route(ask(long_prompt + " q", "a")).node_id == "n1"
    w.catalog.apply_heartbeat("n1", hb(capacity=4, in_flight=3))  # 0.75: out of balance
    c = w.router.route(ask(long_prompt + " q", "b"))  # 0.75 s of queue < 2 s, but guarded
    assert c.node_id == "n0"


def test_engine_waiting_queue_shifts_traffic() -> None:
    w = world()
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(running=4, waiting=6)))
    node = w.catalog.node("n1")
    assert node is not None and node.engine_load == pytest.approx(2.5) and node.load == 2.5
    got = routes(w, lambda i: ask(f"short {i}", f"s{i}"), 40)
    assert got == Counter({"n0": 40})
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(running=0, waiting=0)))
    got = routes(w, lambda i: ask(f"short {i}", f"s{i}"), 40)
    assert got["n1"] >= 10, got


def test_kv_cache_nearly_full_adds_load() -> None:
    w = world()
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(kv_cache_usage=1.0)))
    node = w.catalog.node("n1")
    assert node is not None and node.engine_load == pytest.approx(0.5)
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(kv_cache_usage=0.5)))
    assert node.engine_load == 0.0


def test_stale_engine_signals_are_ignored() -> None:
    w = world()
    old = int(time.time() * 1000) - 10_000  # 10 intervals of 1 s ago
    stale = EngineSignals(running=4, waiting=6, measured_at=old)
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=stale))
    node = w.catalog.node("n1")
    assert node is not None and node.engine is None and node.load == 0.0
    got = routes(w, lambda i: ask(f"short {i}", f"s{i}"), 40)
    assert got["n1"] >= 10, got


def test_engine_signals_repeated_unchanged_go_stale() -> None:
    """A worker whose engine stopped answering repeats its last reading: identical
    heartbeats only touch the node, and the reading is dropped once too old."""
    w = world()
    wall = [time.time()]
    w.catalog._wall = lambda: wall[0]
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(running=4, waiting=6)))
    node = w.catalog.node("n1")
    assert node is not None and node.engine_load == 2.5
    wall[0] += 2.0
    assert w.catalog.touch("n1") and node.engine_load == 2.5  # 2 intervals: still fresh
    wall[0] += 2.0
    assert w.catalog.touch("n1") and node.engine is None and node.load == 0.0


def test_slo_routes_to_the_node_that_meets_it() -> None:
    w = world()
    w.catalog.apply_heartbeat("n0", hb(capacity=4, engine=engine(ttft_p50_ms=3000.0)))
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(ttft_p50_ms=80.0)))
    for i in range(20):
        c = w.router.route(ask(f"hello {i}", f"h{i}", max_ttft_ms=500))
        assert c.node_id == "n1" and c.scores.ttft_ms <= 500


def test_slo_nobody_meets_now_is_429_with_retry_after() -> None:
    w = world()
    for nid in ("n0", "n1"):
        w.catalog.apply_heartbeat(nid, hb(capacity=4, engine=engine(ttft_p50_ms=4000.0)))
    with pytest.raises(SloUnmet) as exc:
        w.router.route(ask("hello", max_ttft_ms=500))
    assert exc.value.code == 429 and exc.value.retry_after_s is not None
    assert exc.value.headers()["Retry-After"] == "4"
    c = w.router.route(ask("hello"))  # without an SLO it is routed as ever
    assert c.node_id in ("n0", "n1")


def test_slo_nobody_could_ever_is_503() -> None:
    w = world()
    huge = "x" * 200_000  # 50 K tokens at 0.2 ms: 10 s of prefill
    with pytest.raises(SloUnattainable) as exc:
        w.router.route(ask(huge, max_ttft_ms=1000))
    assert exc.value.code == 503


def test_itl_slo() -> None:
    w = world()
    w.catalog.apply_heartbeat("n0", hb(capacity=4, engine=engine(itl_p50_ms=90.0)))
    w.catalog.apply_heartbeat("n1", hb(capacity=4, engine=engine(itl_p50_ms=20.0)))
    assert {w.router.route(ask(f"x{i}", max_itl_ms=50)).node_id for i in range(10)} == {"n1"}
    with pytest.raises(SloUnmet):
        w.router.route(ask("x", max_itl_ms=10))


def test_two_routers_fed_the_same_events_agree() -> None:
    a, b = world(), world()
    wall = time.time()
    for i in range(6):
        request = ask(SYSTEM + f" turn {i}" * (i + 1), f"t{i}")
        chosen = a.router.route(request)
        a.router.affinity.routed(request, chosen)
        event = ObservedPrefix(
            node_id=chosen.node_id, blocks=a.router.affinity.hashes(request), at_s=wall
        )
        assert apply_observed(b.router.prefixes, event, b.clock(), wall)
        assert b.router.route(request).node_id == chosen.node_id
    assert a.router.prefixes.nodes == b.router.prefixes.nodes


def test_prefix_index_forgets_with_ttl_and_removed_nodes() -> None:
    w = world()
    keys = w.router.affinity.hashes(ask(SYSTEM))
    w.router.prefixes.record("n1", keys, w.clock())
    assert w.router.prefixes.node_entries("n1") == len(keys) > 0
    w.clock.advance(w.router.prefixes.ttl_s + 1)
    assert w.router.prefixes.match(keys, w.clock()).deepest() == (0, [])


def test_dry_run_and_decision_terms() -> None:
    w = world()
    w.catalog.apply_heartbeat("n0", hb(capacity=4, engine=engine(running=1, waiting=1)))
    w.router.prefixes.record("n1", w.router.affinity.hashes(ask(SYSTEM)), w.clock())
    cands = {c.node_id: c for c in w.router.get_candidates(ask(SYSTEM + " q"))}
    assert cands["n1"].scores.cache > 0.9 and cands["n0"].scores.cache == 0.0
    assert cands["n0"].scores.ttft_ms > cands["n1"].scores.ttft_ms >= 0
    request = ask(SYSTEM + " q", "rq")
    chosen = w.router.route(request)
    w.router.affinity.routed(request, chosen)
    terms = w.router.affinity.pop_terms(request)
    assert terms is not None and terms[0] > 0.9 and terms[2] is not None
    assert w.router.affinity.pop_terms(request) is None


def test_short_requests_skip_the_stage() -> None:
    w = world()
    assert w.router.affinity.hashes(ask("short")) == []
    assert w.router.affinity.rank([], ask("short"), (), list, prefix=False) is None
