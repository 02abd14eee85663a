"""Prefix-cache awareness (issue 14, point 2): block hashes, the prefix index, the cost
model, the wire event. Pure: every time is passed explicitly, nothing sleeps."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.prefix import (
    DEFAULT_BLOCK_BYTES,
    ObservedPrefix,
    block_hashes,
    chat_block_hashes,
    decode_observed,
    encode_observed,
    render_chat,
)
from gateway.prefix_cost import (
    PrefixCandidate,
    PrefixCostModel,
    matched_fraction,
    overloaded,
    predicted_ttft_s,
    prefix_score,
    prompt_tokens,
    score_candidates,
)
from gateway.prefix_index import PrefixIndex, apply_observed

B = DEFAULT_BLOCK_BYTES


def text(n: int, fill: str = "a") -> str:
    return fill * n


def chain(tag: str, blocks: int) -> list[int]:
    """Keys of a prompt of ``blocks`` whole blocks, unique to ``tag``."""
    return block_hashes((tag + "|" + "x" * B * blocks)[: B * blocks])


# -- block hashes ---------------------------------------------------------------------


def test_block_count_and_partial_last_block_ignored() -> None:
    assert block_hashes("") == []
    assert block_hashes(text(B - 1)) == []
    assert len(block_hashes(text(B))) == 1
    assert len(block_hashes(text(10 * B + B - 1))) == 10
    whole = block_hashes(text(3 * B))
    assert block_hashes(text(3 * B) + "tail") == whole  # a partial block adds nothing


def test_key_is_blake2b_of_the_whole_prefix() -> None:
    """The documented scheme, reproducible anywhere: key i = BLAKE2b-64 over the
    length-prefixed namespace then bytes[: (i + 1) * B], little-endian."""
    data = bytes(range(256)) * 3
    for ns in ("", "llama-3-8b"):
        keys = block_hashes(data, namespace=ns)
        for i, key in enumerate(keys):
            raw = len(ns.encode()).to_bytes(2, "big") + ns.encode() + data[: (i + 1) * B]
            want = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
            assert key == want
            assert 0 <= key < 1 << 64


def test_same_prefix_same_leading_keys_then_divergence() -> None:
    base = "".join(chr(ord("a") + i % 26) for i in range(5 * B))
    changed = base[: 2 * B + 7] + "#" + base[2 * B + 8 :]  # a byte of block 2 differs
    a, b = block_hashes(base), block_hashes(changed)
    assert len(a) == len(b) == 5
    assert a[:2] == b[:2]
    assert all(x != y for x, y in zip(a[2:], b[2:], strict=True))  # every later key differs


def test_str_and_bytes_agree_and_namespace_separates() -> None:
    prompt = "héllo wörld " * 100
    assert block_hashes(prompt) == block_hashes(prompt.encode())
    assert block_hashes(prompt, namespace="m1") != block_hashes(prompt, namespace="m2")
    assert len(block_hashes(prompt, block_bytes=64)) == len(prompt.encode()) // 64
    with pytest.raises(ValueError):
        block_hashes(prompt, block_bytes=0)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=0, max_size=6 * 64),
    st.binary(min_size=0, max_size=6 * 64),
    st.binary(min_size=0, max_size=6 * 64),
)
def test_shared_keys_are_exactly_the_shared_whole_blocks(common: bytes, x: bytes, y: bytes) -> None:
    a, b = common + x, common + y
    ka, kb = block_hashes(a, block_bytes=64), block_hashes(b, block_bytes=64)
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    for i in range(min(len(ka), len(kb))):
        assert (ka[i] == kb[i]) == ((i + 1) * 64 <= same)


def chat(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


SYSTEM = "You are a helpful assistant. " * 40  # ~1.1 KB, 4 blocks


def test_chat_hashes_are_the_rendered_string_hashes() -> None:
    messages = chat(("system", SYSTEM), ("user", "hi " * 200))
    rendered = render_chat(messages)
    assert chat_block_hashes(messages) == block_hashes(rendered)
    assert chat_block_hashes(messages, namespace="m") == block_hashes(rendered, namespace="m")
    assert rendered.startswith(b"system")  # the system prompt first, in the given order


def test_chat_later_turns_extend_the_earlier_rendering() -> None:
    first = chat(("system", SYSTEM), ("user", "question one " * 30))
    later = [*first, *chat(("assistant", "answer " * 50), ("user", "question two " * 30))]
    r1, r2 = render_chat(first), render_chat(later)
    assert r2.startswith(r1)
    k1, k2 = chat_block_hashes(first), chat_block_hashes(later)
    assert k2[: len(k1)] == k1  # a multi-turn chat matches its earlier turns' blocks


def test_chat_shared_system_prompt_shares_leading_blocks() -> None:
    a = chat_block_hashes(chat(("system", SYSTEM), ("user", "alpha " * 100)))
    b = chat_block_hashes(chat(("system", SYSTEM), ("user", "beta " * 100)))
    shared = len(render_chat(chat(("system", SYSTEM)))) // B
    assert shared >= 4
    assert a[:shared] == b[:shared] and a[shared + 1 :] != b[shared + 1 :]


def test_chat_system_argument_renders_as_a_first_system_message() -> None:
    user = chat(("user", "hello " * 100))
    assert render_chat(user, system=SYSTEM) == render_chat(chat(("system", SYSTEM)) + user)


def test_chat_content_parts_and_tool_calls() -> None:
    plain = chat(("user", "look at this " * 30))
    parts = chat(("user", [{"type": "text", "text": "look at this " * 30}]))
    assert render_chat(plain) == render_chat(parts)
    image = {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    with_image = chat(("user", [{"type": "text", "text": "look"}, image]))
    other = chat(("user", [{"type": "text", "text": "look"}, {**image, "image_url": {"url": "y"}}]))
    assert render_chat(with_image) != render_chat(other)
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    msg = [{"role": "assistant", "content": None, "tool_calls": call}]
    assert b'"name":"f"' in render_chat(msg)
    odd = [{"role": "user", "content": {"b": 1, "a": 2}}]  # neither text nor parts
    assert b'{"a":2,"b":1}' in render_chat(odd)
    named = [{"role": "user", "name": "bob", "content": "x"}]
    assert render_chat(named) != render_chat(chat(("user", "x")))


# -- the index ----------------------------------------------------------------------


def test_match_returns_the_longest_held_prefix_per_node() -> None:
    ix = PrefixIndex()
    keys = chain("p", 8)
    ix.record("full", keys, 1.0)
    ix.record("half", keys[:4], 1.0)
    ix.record("one", keys[:1], 1.0)
    ix.record("other", chain("q", 8), 1.0)
    assert ix.match(keys, 2.0) == {"full": 8, "half": 4, "one": 1}
    assert ix.match(keys[:3], 2.0) == {"full": 3, "half": 3, "one": 1}
    assert ix.match(chain("r", 8), 2.0) == {}
    assert ix.match([], 2.0) == {}
    # a node holding later blocks but not block 0 holds no prefix of this request
    ix.record("tail", keys[1:], 1.0)
    assert "tail" not in ix.match(keys, 2.0)
    assert ix.match_nodes(keys, ["full", "half", "tail", "nobody"], 2.0) == {
        "full": 8,
        "half": 4,
        "tail": 0,
        "nobody": 0,
    }


def test_prefix_match_reads() -> None:
    ix = PrefixIndex()
    keys = chain("p", 8)
    ix.record("full", keys, 1.0)
    ix.record("half", keys[:4], 1.0)
    got = ix.match(keys, 2.0)
    assert got.blocks == 8
    assert got.depth("full") == 8 and got.depth("half") == 4 and got.depth("x") == 0
    assert got.fraction("half") == 0.5 and got.fraction("x") == 0.0
    assert got.fractions(["full", "x", "half"]) == [1.0, 0.0, 0.5]
    assert "half" in got and "x" not in got
    assert got["full"] == 8 and got.get("x", 0) == 0
    with pytest.raises(KeyError):
        got["x"]
    assert len(got) == 2 and sorted(got) == ["full", "half"]
    assert got.deepest() == (8, ["full"])
    assert "half" in repr(got)
    none = ix.match(chain("q", 3), 2.0)
    assert none.deepest() == (0, []) and len(none) == 0 and none.fraction("full") == 0.0
    assert ix.match([], 2.0).fraction("full") == 0.0
    assert ix.match([], 2.0).fractions(["full"]) == [0.0]


def test_prefix_match_when_holders_are_not_nested() -> None:
    """Exact events can leave a node holding later blocks without the earlier ones."""
    ix = PrefixIndex()
    keys = chain("p", 4)
    ix.record("a", keys[:2], 1.0)
    ix.record_blocks("b", keys[1:], 1.0)  # no block 0
    got = ix.match(keys, 2.0)
    assert got.depth("a") == 2 and got.depth("b") == 0
    assert got.deepest() == (2, ["a"])  # b's deeper blocks are no prefix
    assert got == {"a": 2} and got.as_dict() == {"a": 2}
    assert list(got.values()) == [2] and list(got.items()) == [("a", 2)]
    assert got == ix.match(keys, 2.0) and got != ix.match(keys[:1], 2.0)


def test_global_eviction_skips_a_removed_node() -> None:
    ix = PrefixIndex(max_entries=4)
    old, mid, new = chain("o", 4), chain("m", 4), chain("n", 2)
    ix.record("a", old, 1.0)
    ix.remove_node("a")  # its heap entry stays until it surfaces
    ix.record("b", mid, 2.0)
    ix.record("c", new, 3.0)  # 6 > 4: a is skipped, b's two deepest go
    assert ix.match(mid, 3.0) == {"b": 2}
    assert ix.match(new, 3.0) == {"c": 2}
    assert len(ix) == 4


def test_match_with_one_holder_then_many() -> None:
    ix = PrefixIndex()
    sys_keys = chain("s", 3)
    for n in range(5):
        conv = block_hashes(("s|" + "x" * 3 * B)[: 3 * B] + f"conv {n} " * 200)
        assert conv[:3] == sys_keys
        ix.record(f"n{n}", conv, 1.0)
    probe = block_hashes(("s|" + "x" * 3 * B)[: 3 * B] + "conv 2 " * 200)
    got = ix.match(probe, 2.0)
    assert got["n2"] == len(probe)
    assert {n: d for n, d in got.items() if n != "n2"} == {f"n{i}": 3 for i in (0, 1, 3, 4)}


def test_ttl_expiry_and_refresh() -> None:
    ix = PrefixIndex(ttl_s=120.0)
    keys = chain("p", 4)
    ix.record("a", keys, 1000.0)
    ix.record("b", keys[:2], 1050.0)
    assert ix.match(keys, 1119.0) == {"a": 4, "b": 2}
    assert ix.match(keys, 1121.0) == {"b": 2}  # a's entries are 121 s old
    assert len(ix) == 2 and ix.nodes == ["b"]
    ix.record("b", keys[:1], 1160.0)  # refreshes block 0 only
    assert ix.match(keys, 1171.0) == {"b": 1}  # block 1 aged out, block 0 did not
    assert ix.expire(1300.0) == 1
    assert len(ix) == 0 and ix.match(keys, 1300.0) == {}


def test_time_never_goes_backwards() -> None:
    ix = PrefixIndex(ttl_s=10.0)
    keys = chain("p", 2)
    ix.record("a", keys, 100.0)
    ix.record("b", keys, 50.0)  # an earlier time counts as the latest seen
    assert ix.match(keys, 105.0) == {"a": 2, "b": 2}
    assert ix.match(keys, 111.0) == {}


def test_per_node_cap_evicts_the_deepest_blocks_first() -> None:
    ix = PrefixIndex(max_blocks_per_node=6)
    keys = chain("p", 10)
    ix.record("a", keys, 1.0)
    assert ix.node_entries("a") == 6
    assert ix.match(keys, 1.0) == {"a": 6}
    other = chain("q", 4)
    ix.record("a", other, 2.0)  # the older prompt's tail makes room
    assert ix.match(keys, 2.0) == {"a": 2}
    assert ix.match(other, 2.0) == {"a": 4}
    ix.set_node_capacity("b", 3)
    ix.record("b", keys, 3.0)
    assert ix.node_entries("b") == 3
    ix.set_node_capacity("b", None)
    ix.record("b", keys, 4.0)
    assert ix.node_entries("b") == 6


def test_global_cap_evicts_the_least_recently_recorded() -> None:
    ix = PrefixIndex(max_entries=10)
    old, mid, new = chain("o", 4), chain("m", 4), chain("n", 4)
    ix.record("a", old, 1.0)
    ix.record("b", mid, 2.0)
    ix.record("a", old[:1], 3.0)  # refresh a's block 0: newer than all of b's
    ix.record("c", new, 4.0)  # 12 entries: evict the 2 oldest, a's blocks 3 and 2
    assert len(ix) == 10
    assert ix.match(old, 4.0) == {"a": 2}
    assert ix.match(mid, 4.0) == {"b": 4}
    ix.record("c", chain("z", 3), 5.0)  # 3 more: a's block 1 (t=1), then b's 3 and 2
    assert len(ix) == 10
    assert ix.match(old, 5.0) == {"a": 1}
    assert ix.match(mid, 5.0) == {"b": 2}
    assert ix.match(new, 5.0) == {"c": 4}


def test_remove_node_and_exact_events() -> None:
    ix = PrefixIndex()
    keys = chain("p", 6)
    ix.record_blocks("a", keys, 1.0)
    ix.record("b", keys, 1.0)
    ix.evict_blocks("a", [keys[3], keys[5], 12345])  # BlockRemoved for two of them
    assert ix.match(keys, 2.0) == {"a": 3, "b": 6}
    assert ix.node_entries("a") == 4
    ix.remove_node("b")
    assert ix.match(keys, 2.0) == {"a": 3}
    assert len(ix) == 4
    ix.remove_node("b")  # unknown: nothing happens
    ix.evict_blocks("nobody", keys)
    ix.remove_node("a")
    assert len(ix) == 0 and ix.nodes == [] and ix.match(keys, 2.0) == {}
    assert not ix._holders  # nothing left behind


def check_consistent(ix: PrefixIndex) -> None:
    """The structures agree: holders <-> per-node entries, the entry count, the caps."""
    pairs = {(n, h) for n, od in ix._nodes.items() for h in od}
    held = set()
    for h, who in ix._holders.items():
        names = {who} if isinstance(who, str) else who
        assert names, "an empty holder set is left behind"
        held |= {(n, h) for n in names}
    assert pairs == held
    assert len(ix) == len(pairs) <= ix.max_entries
    for n, od in ix._nodes.items():
        assert len(od) <= ix._caps.get(n, ix.max_blocks_per_node)
        times = list(od.values())
        assert times == sorted(times)  # LRU order is time order


NODES = [f"n{i}" for i in range(5)]
PROMPTS = [chain(f"p{i}", 1 + i % 7) for i in range(6)]
PROMPTS += [PROMPTS[0][:2] + block_hashes("fork" * 200)[2:5]]  # shares 2 blocks with p0
op_st = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(NODES), st.integers(0, len(PROMPTS) - 1)),
    st.tuples(st.just("evict"), st.sampled_from(NODES), st.integers(0, len(PROMPTS) - 1)),
    st.tuples(st.just("remove"), st.sampled_from(NODES), st.just(0)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 1.0, 7.0, 30.0]), st.just(0)),
)


def run_ops(ix: PrefixIndex, ops: list[tuple[str, Any, int]]) -> None:
    """Apply ``ops`` to ``ix`` and to a model without any cap (the truth, as far as
    TTL and explicit evictions go), checking after each step that the index is
    consistent, within its bounds, and never claims more than the model."""
    now = 0.0
    seen: dict[tuple[str, int], float] = {}
    for op, arg, p in ops:
        if op == "wait":
            now += arg
        elif op == "record":
            ix.record(arg, PROMPTS[p], now)
            seen.update({(arg, h): now for h in PROMPTS[p]})
        elif op == "evict":
            ix.evict_blocks(arg, PROMPTS[p][-1:])
            seen.pop((arg, PROMPTS[p][-1]), None)
        else:
            ix.remove_node(arg)
            seen = {k: t for k, t in seen.items() if k[0] != arg}
        check_consistent(ix)
        for keys in PROMPTS:
            got = ix.match(keys, now)
            for n in NODES:
                truth = 0
                while truth < len(keys) and seen.get((n, keys[truth]), -1e9) >= now - ix.ttl_s:
                    truth += 1
                assert got.get(n, 0) <= truth
                if ix.max_entries >= 10_000 and ix.max_blocks_per_node >= 100:
                    assert got.get(n, 0) == truth  # no cap reached: exact
            assert ix.match_nodes(keys, NODES, now) == {n: got.get(n, 0) for n in NODES}
            lazy = {n: got.depth(n) for n in NODES if got.depth(n)}
            assert got.fractions(NODES) == [got.fraction(n) for n in NODES]
            assert dict(got) == lazy  # the whole answer agrees with the per-node reads
            deepest = max(lazy.values(), default=0)
            depth, nodes = got.deepest()
            assert (depth, sorted(nodes)) == (
                deepest,
                [n for n in sorted(lazy) if lazy[n] == deepest],
            )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(op_st, max_size=40),
    st.integers(1, 30),
    st.integers(1, 8),
    st.sampled_from([5.0, 20.0, 120.0]),
)
def test_bounds_hold_and_matches_never_exceed_the_truth(
    ops: list[tuple[str, Any, int]], max_entries: int, per_node: int, ttl: float
) -> None:
    ix = PrefixIndex(ttl_s=ttl, max_entries=max_entries, max_blocks_per_node=per_node)
    run_ops(ix, ops)


@settings(max_examples=100, deadline=None)
@given(st.lists(op_st, max_size=40), st.sampled_from([5.0, 20.0, 120.0]))
def test_without_caps_match_is_exact(ops: list[tuple[str, Any, int]], ttl: float) -> None:
    run_ops(PrefixIndex(ttl_s=ttl, max_entries=10_000, max_blocks_per_node=100), ops)


def test_invalid_index_settings() -> None:
    for bad in ({"ttl_s": 0.0}, {"max_entries": 0}, {"max_blocks_per_node": 0}):
        with pytest.raises(ValueError):
            PrefixIndex(**bad)


# -- the wire event -----------------------------------------------------------------


def test_observed_prefix_round_trip_and_size() -> None:
    keys = block_hashes(text(32 * 1024, "z"))
    assert len(keys) == 128
    event = ObservedPrefix(node_id="node-17", blocks=keys, at_s=1_764_547_200.25, origin="gw-1")
    raw = encode_observed(event)
    assert decode_observed(raw) == event
    assert len(raw) < 1300  # ~9 bytes a key
    with pytest.raises(msgspec.ValidationError):
        decode_observed(msgspec.msgpack.encode({"node_id": "n", "blocks": [-1], "at_s": 1.0}))
    with pytest.raises(msgspec.ValidationError):
        decode_observed(msgspec.msgpack.encode({"node_id": "n", "blocks": [0] * 5000, "at_s": 1}))


def test_apply_observed_records_fresh_events_only() -> None:
    ix = PrefixIndex(ttl_s=120.0)
    keys = chain("p", 3)
    fresh = ObservedPrefix(node_id="a", blocks=keys, at_s=10_000.0)
    assert apply_observed(ix, fresh, now=5.0, wall_now=10_000.5)
    assert ix.match(keys, 5.0) == {"a": 3}
    stale = ObservedPrefix(node_id="b", blocks=keys, at_s=9_000.0)
    assert not apply_observed(ix, stale, now=6.0, wall_now=10_000.5)
    assert ix.match(keys, 6.0) == {"a": 3}
    ahead = ObservedPrefix(node_id="c", blocks=keys, at_s=10_005.0)  # sender's clock ahead
    assert apply_observed(ix, ahead, now=7.0, wall_now=10_001.0)
    assert ix.match(keys, 7.0) == {"a": 3, "c": 3}


# -- the cost model -----------------------------------------------------------------

M = PrefixCostModel()
TOKENS = 2000.0  # an 8 KB prompt


def test_defaults_and_formula() -> None:
    assert (M.prefill_s_per_token, M.queue_s_per_load, M.bytes_per_token) == (2e-4, 1.0, 4.0)
    assert (M.overload_load, M.balance_abs_load, M.balance_rel, M.ref_s) == (1.0, 0.5, 1.5, 1.0)
    # TTFT = queue_s_per_load * load + (1 - f) * T * c
    assert predicted_ttft_s(0.25, 0.3, TOKENS) == pytest.approx(0.3 + 0.75 * 2000 * 2e-4)
    assert predicted_ttft_s(0.5, 0.3, TOKENS, queue_s=2.0) == pytest.approx(2.0 + 0.2)
    assert prefix_score(1.0, 0.0, TOKENS) == 1.0
    assert prefix_score(0.0, 0.0, 5000.0) == pytest.approx(0.5)  # TTFT = ref_s
    assert prompt_tokens(8192) == 2048.0
    assert matched_fraction(3, 4) == 0.75 and matched_fraction(0, 0) == 0.0
    assert matched_fraction(9, 4) == 1.0


def test_warm_idle_beats_cold_idle() -> None:
    warm, cold = prefix_score(1.0, 0.0, TOKENS), prefix_score(0.0, 0.0, TOKENS)
    assert warm > cold
    assert prefix_score(0.5, 0.0, TOKENS) > cold


def test_cold_idle_beats_warm_overloaded() -> None:
    cold = prefix_score(0.0, 0.0, TOKENS)
    assert prefix_score(1.0, 1.0, TOKENS) < cold  # at capacity: no cache credit
    assert overloaded(1.0) and not overloaded(0.99)
    # out of balance with the least loaded candidate: no credit either (sglang's test)
    got = score_candidates(
        [PrefixCandidate("warm", 1.0, 0.6), PrefixCandidate("cold", 0.0, 0.0)], TOKENS
    )
    assert got[1] > got[0]
    assert overloaded(0.6, 0.0) and not overloaded(0.6, 0.2) and not overloaded(0.4, 0.0)


def test_break_even_is_the_prefill_saved() -> None:
    """A fully cached 1,000-token prompt is worth 0.2 s = 0.2 of load."""
    cold = prefix_score(0.0, 0.0, 1000.0, min_load=0.0)
    assert prefix_score(1.0, 0.19, 1000.0, min_load=0.0) > cold
    assert prefix_score(1.0, 0.21, 1000.0, min_load=0.0) < cold
    # a long shared history outweighs more load, until the guard
    cold = prefix_score(0.0, 0.0, 8000.0, min_load=0.0)
    assert prefix_score(1.0, 0.45, 8000.0, min_load=0.0) > cold
    assert prefix_score(1.0, 0.55, 8000.0, min_load=0.0) < cold


def test_score_candidates() -> None:
    assert score_candidates([], TOKENS) == []
    cands = [
        PrefixCandidate("a", 0.9, 0.1),
        PrefixCandidate("b", 0.0, 0.0),
        PrefixCandidate("c", 0.9, 0.1, queue_s=5.0),
    ]
    a, b, c = score_candidates(cands, TOKENS)
    assert a > b > c


def test_invalid_models() -> None:
    for bad in (
        {"prefill_s_per_token": 0.0},
        {"queue_s_per_load": -1.0},
        {"bytes_per_token": 0.0},
        {"ref_s": 0.0},
        {"balance_rel": 0.5},
    ):
        with pytest.raises(ValueError):
            PrefixCostModel(**bad)


frac = st.floats(0.0, 1.0)
load = st.floats(0.0, 4.0)
tokens = st.floats(1.0, 100_000.0)
min_load = st.one_of(st.none(), st.floats(0.0, 4.0))


@settings(max_examples=300, deadline=None)
@given(frac, load, load, tokens, min_load)
def test_score_falls_with_load(f: float, l1: float, l2: float, t: float, m: float | None) -> None:
    lo, hi = sorted((l1, l2))
    s_lo, s_hi = prefix_score(f, lo, t, min_load=m), prefix_score(f, hi, t, min_load=m)
    assert 0.0 < s_hi <= s_lo <= 1.0
    if hi - lo > 1e-6:
        assert predicted_ttft_s(f, hi, t, min_load=m) > predicted_ttft_s(f, lo, t, min_load=m)


@settings(max_examples=300, deadline=None)
@given(frac, frac, load, tokens, min_load)
def test_score_rises_with_matched_fraction(
    f1: float, f2: float, ld: float, t: float, m: float | None
) -> None:
    lo, hi = sorted((f1, f2))
    assert prefix_score(hi, ld, t, min_load=m) >= prefix_score(lo, ld, t, min_load=m)
    if not overloaded(ld, m) and hi - lo > 1e-6:
        assert prefix_score(hi, ld, t, min_load=m) > prefix_score(lo, ld, t, min_load=m)


@settings(max_examples=300, deadline=None)
@given(frac, load, tokens)
def test_cold_idle_beats_any_overloaded_node(f: float, extra: float, t: float) -> None:
    over = M.overload_load + extra
    assert prefix_score(f, over, t) < prefix_score(0.0, 0.0, t)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(frac, load, st.one_of(st.none(), st.floats(0.0, 10.0))), max_size=8),
    tokens,
)
def test_score_candidates_is_prefix_score_against_the_least_loaded(
    rows: list[tuple[float, float, float | None]], t: float
) -> None:
    cands = [PrefixCandidate(f"n{i}", f, ld, q) for i, (f, ld, q) in enumerate(rows)]
    least = min((ld for _, ld, _ in rows), default=0.0)
    want = [prefix_score(f, ld, t, min_load=least, queue_s=q) for f, ld, q in rows]
    assert score_candidates(cands, t) == pytest.approx(want, rel=1e-12)
