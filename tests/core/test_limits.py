"""Tenant limits' accounting (gateway/limits.py) and the limiter on an in-process store."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import limits as lim
from gateway.quota import Limiter, LocalStore, key_tenant
from shared import errors
from shared.config import TenantLimits
from shared.messages import InferRequest


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reservation_estimates_the_prompt_on_the_high_side() -> None:
    assert lim.reservation(0, 100) == 100
    assert lim.reservation(400, 100) == 234  # 400 bytes / 3, rounded up (134), + 100
    assert lim.reservation(10, -5) == 4


def test_max_tokens_reads_either_name_and_ignores_junk() -> None:
    assert lim.max_tokens(InferRequest(input="x", params={"max_tokens": 7})) == 7
    assert lim.max_tokens(InferRequest(input="x", params={"max_completion_tokens": 9})) == 9
    assert lim.max_tokens(InferRequest(input="x", params={"max_tokens": True})) is None
    assert lim.max_tokens(InferRequest(input="x", params={"max_tokens": "5"})) is None
    assert lim.max_tokens(InferRequest(input="x")) is None


def test_a_window_change_starts_with_nothing_leased() -> None:
    pool = lim.Pool("t", lim.RPM, 10, 60.0)
    pool.roll(120.0)
    pool.balance = 5
    pool.roll(179.0)
    assert pool.balance == 5 and pool.window == 2
    pool.roll(180.0)
    assert pool.balance == 0 and pool.window == 3
    assert pool.key() == "rpm.t.3"
    assert pool.retry_after(190.0) == pytest.approx(50.0)


def test_settle_gives_back_the_unused_reservation_in_its_window_only() -> None:
    pools = lim.pools_for("t", TenantLimits(token_budget=1000, max_concurrent=2))
    for p in pools:
        p.roll(0.0)
    budget = next(p for p in pools if p.kind == lim.BUDGET)
    slots = next(p for p in pools if p.kind == lim.CONCURRENT)
    budget.balance, slots.balance = 500, 2
    ticket = lim.charge("t", pools, 300)
    assert budget.balance == 200 and slots.in_use == 1
    lim.settle(ticket, 120)
    assert budget.balance == 380 and slots.in_use == 0
    # a reservation from a past window owes the new window nothing
    ticket = lim.charge("t", pools, 100)
    budget.roll(10 * 86_400.0)
    lim.settle(ticket, 0)
    assert budget.balance == 0


def test_key_tenant_keeps_safe_ids_and_encodes_the_rest() -> None:
    assert key_tenant("acme-1") == "acme-1"
    assert key_tenant("a.b>c") == "x" + b"a.b>c".hex()


async def test_a_tenant_over_its_budget_gets_429_with_retry_after() -> None:
    clock = Clock(86_400.0 * 5 + 100)
    limiter = Limiter({"acme": TenantLimits(token_budget=1000)}, LocalStore(), "gw", clock=clock)
    tickets = [await limiter.admit("acme", 0, 300) for _ in range(3)]
    with pytest.raises(errors.RateLimited) as info:
        await limiter.admit("acme", 0, 300)
    # requests in flight hold reservations: they may give some back soon
    assert info.value.code == 429 and info.value.retry_after_s == 1.0
    assert "token budget (1000)" in info.value.message
    # other tenants have no limit
    assert await limiter.admit("other", 0, 10**6) is None
    for t in tickets[:2]:
        assert t is not None
        limiter.settle(t, 100)  # 200 of 600 reserved used: 400 given back
    again = await limiter.admit("acme", 0, 300)
    assert again is not None
    # spent for good: 1,200 used, nothing in flight -> come back when the period ends
    limiter.settle(again, 300)
    limiter.settle(tickets[2], 300)  # type: ignore[arg-type]
    for t in [await limiter.admit("acme", 0, 200)]:
        limiter.settle(t, 400)  # type: ignore[arg-type]  (a node beyond its reservation)
    await limiter.tidy()
    with pytest.raises(errors.RateLimited) as info:
        await limiter.admit("acme", 0, 300)
    assert info.value.retry_after_s == pytest.approx(86_300.0)


async def test_star_applies_to_every_tenant_without_an_entry() -> None:
    limiter = Limiter({"*": TenantLimits(max_concurrent=1)}, LocalStore(), "gw")
    held = await limiter.admit("a", 0, 1)
    assert await limiter.admit("b", 0, 1) is not None  # each tenant its own pools
    with pytest.raises(errors.RateLimited):
        await limiter.admit("a", 0, 1)
    assert held is not None
    limiter.settle(held, 1)
    assert await limiter.admit("a", 0, 1) is not None


@settings(max_examples=60, deadline=None)
@given(
    budget=st.integers(100, 5000),
    requests=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 400), st.integers(0, 400)),
        min_size=1,
        max_size=80,
    ),
)
def test_gateways_sharing_a_store_never_hand_out_more_than_the_budget(
    budget: int, requests: list[tuple[int, int, int]]
) -> None:
    """Three limiters on one store: reservations outstanding + tokens used never exceed
    the budget, whatever the interleaving, when nodes stay within the reservation."""

    async def run() -> None:
        store = LocalStore()
        gws = [Limiter({"t": TenantLimits(token_budget=budget)}, store, f"gw{i}") for i in range(3)]
        spent = 0
        for gw, max_tokens, used in requests:
            try:
                ticket = await gws[gw].admit("t", 0, max_tokens)
            except errors.RateLimited:
                continue
            assert ticket is not None
            used = min(used, ticket.reserved)
            spent += used
            gws[gw].settle(ticket, used)
            assert spent <= budget
        leased = sum(store.counters.values())
        assert leased <= budget

    asyncio.run(run())


class YieldingStore(LocalStore):
    """A store whose every call lets other requests run (as a KV round trip does)."""

    async def take(self, key: str, want: int, limit: int) -> int:
        await asyncio.sleep(0)
        return await super().take(key, want, limit)

    async def give(self, key: str, amount: int) -> None:
        await asyncio.sleep(0)
        await super().give(key, amount)


async def test_concurrent_requests_never_share_one_lease_twice() -> None:
    """Many requests at once on three gateways whose store yields: what is handed out
    (reservations settled at full use) never exceeds the budget."""
    store = YieldingStore()
    gws = [Limiter({"t": TenantLimits(token_budget=5000)}, store, f"gw{i}") for i in range(3)]
    spent = 0

    async def one(k: int) -> None:
        nonlocal spent
        gw = gws[k % 3]
        for _ in range(k % 7):  # arrive staggered: some while another leases
            await asyncio.sleep(0)
        try:
            ticket = await gw.admit("t", 30, 40)
        except errors.RateLimited:
            return
        assert ticket is not None
        await asyncio.sleep(0)
        spent += ticket.reserved
        gw.settle(ticket, ticket.reserved)

    for _ in range(5):
        await asyncio.gather(*(one(k) for k in range(60)))
        await asyncio.gather(*(gw.tidy() for gw in gws))
    assert 0 < spent <= 5000


async def test_a_slot_freed_just_after_the_next_request_arrives_is_waited_for() -> None:
    # With direct replies the caller has its answer before the gateway sees the node's
    # copy: its next request may arrive while the last one's slot is still held here.
    limiter = Limiter(
        {"t": TenantLimits(max_concurrent=1, requests_per_minute=20)}, LocalStore(), "gw"
    )
    held = await limiter.admit("t", 0, 1)
    assert held is not None
    loop = asyncio.get_running_loop()
    loop.call_later(0.005, limiter.settle, held, 1)
    started = loop.time()
    assert await limiter.admit("t", 0, 1) is not None  # waited for the slot, no 429
    assert loop.time() - started < 0.05
    # A tenant really over its concurrency still gets its 429, after the short grace.
    with pytest.raises(errors.RateLimited):
        await limiter.admit("t", 0, 1)
