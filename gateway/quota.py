"""Tenant limits that hold across gateways: local allotments leased from a shared bucket.

``Limiter.admit`` is on the request path: it hands out from this gateway's allotments
(gateway/limits.py) and touches the shared store only when an allotment runs short
(about once per sixteenth of a limit, not per request). The store is a JetStream
key-value bucket, ``fedgate_limits``, updated by compare-and-set, so that gateways
never lease more than a limit between them:

- a counter (``rpm``/``tpm``/``budget``) is one key per tenant and window,
  ``<kind>.<tenant>.<window>``, holding the units leased so far in that window;
- concurrency is one key per tenant, ``concurrent.<tenant>``, holding each gateway's
  held slots and the time its hold expires (``{"gw-1": [3, 1764547200.5]}``); holds are
  renewed every ``lease_s / 3`` and shrink to what is in use plus one spare, so that a
  gateway that dies frees its slots within ``lease_s`` (10 s).

The stores are in gateway/quota_store.py: when the bucket does not answer (JetStream down
or not enabled) the limits become this gateway's alone, with a warning, until it answers
again — never unlimited, never a refusal of everything (docs/tenants.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

from gateway import limits as lim
from gateway.limits import Pool, Ticket
from gateway.quota_store import DegradingStore, KvStore, LeaseStore, LocalStore
from shared import errors
from shared.config import TenantLimits
from shared.connection import RateLimitedLog
from shared.messages import TenantLimitView

log = logging.getLogger("fedgate.gateway")

SLOT_GRACE_S = 0.05
"""How long a request over its tenant's concurrency waits for a slot before the 429."""
SLOT_POLL_S = 0.01
"""How often, meanwhile, the shared holds are asked again (another gateway's slot)."""

LABELS = {
    lim.CONCURRENT: "concurrent requests",
    lim.RPM: "requests per minute",
    lim.TPM: "tokens per minute",
    lim.BUDGET: "token budget",
}
_KEY_SAFE = re.compile(r"^[-_=A-Za-z0-9]{1,64}$")


def key_tenant(tenant: str) -> str:
    """A tenant id as a key token (ids with other characters are hex-encoded)."""
    return tenant if _KEY_SAFE.match(tenant) else "x" + tenant.encode().hex()[:120]


class Limiter:
    """Admits requests against their tenant's limits; see the module docstring.

    ``limits``: tenant id -> ``TenantLimits`` (``"*"`` for every other tenant)."""

    def __init__(
        self,
        limits: dict[str, TenantLimits],
        store: LeaseStore,
        holder: str,
        *,
        default_max_tokens: int = 1024,
        lease_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.store = store
        self.holder = holder
        self.default_max_tokens = default_max_tokens
        self.lease_s = lease_s
        self.clock = clock
        self.pools: dict[str, list[Pool]] = {}
        self.store_errors = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._released: dict[str, asyncio.Event] = {}
        """Set when a request of the tenant ends (its slot is free again)."""
        self._shrinking: set[asyncio.Task[bool]] = set()
        self._noisy = RateLimitedLog(log)

    def _pools(self, tenant: str) -> list[Pool]:
        pools = self.pools.get(tenant)
        if pools is None:
            limits = self.limits.get(tenant) or self.limits.get("*")
            pools = lim.pools_for(key_tenant(tenant), limits) if limits else []
            self.pools[tenant] = pools
        return pools

    async def admit(self, tenant: str, prompt_bytes: int, max_tokens: int | None) -> Ticket | None:
        """Charge one request to its tenant's allotments (None: the tenant has no limits).

        Raises ``errors.RateLimited`` (429, ``Retry-After``) when a limit has no room."""
        pools = self._pools(tenant)
        if not pools:
            return None
        tokens = lim.reservation(prompt_bytes, max_tokens or self.default_max_tokens)
        now = self.clock()
        if lim.shortfall(pools, tokens, now):
            lock = self._locks.setdefault(tenant, asyncio.Lock())
            async with lock:  # one lease at a time per tenant; others use its result
                for pool, need in lim.shortfall(pools, tokens, self.clock()):
                    if not await self._lease(pool, need):  # store down: refuse, not overshoot
                        raise errors.Unavailable(
                            f"tenant {tenant!r}: its limits cannot be checked now (the "
                            "limits store is unavailable); try again shortly"
                        )
            short = lim.shortfall(pools, tokens, self.clock())
            if short and all(pool.kind == lim.CONCURRENT for pool, _ in short):
                short = await self._await_slot(tenant, pools, tokens, lock)
            if short:
                raise await self._refusal(tenant, short, tokens, now)
        return lim.charge(tenant, pools, tokens)

    async def _await_slot(
        self, tenant: str, pools: list[Pool], tokens: int, lock: asyncio.Lock
    ) -> list[tuple[Pool, int]]:
        """Over its concurrency only: wait up to ``SLOT_GRACE_S`` for one of the tenant's
        requests to end (here, or another gateway's hold to shrink), leasing again each
        ``SLOT_POLL_S``; what is still short then. With direct replies a caller has its
        answer before the gateway has seen the node's copy: a caller that sends its next
        request at once would otherwise find its last request's slot still held."""
        loop = asyncio.get_running_loop()
        released = self._released.setdefault(tenant, asyncio.Event())
        deadline = loop.time() + SLOT_GRACE_S
        short = lim.shortfall(pools, tokens, self.clock())
        while short and (left := deadline - loop.time()) > 0:
            released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), min(left, SLOT_POLL_S))
            async with lock:
                for pool, need in lim.shortfall(pools, tokens, self.clock()):
                    if not await self._lease(pool, need):
                        break
            short = lim.shortfall(pools, tokens, self.clock())
        return short

    async def _refusal(
        self, tenant: str, short: list[tuple[Pool, int]], tokens: int, now: float
    ) -> errors.RateLimited:
        """The 429 for a request no allotment covers; ``Retry-After`` from what the fleet
        has spent (one read of the store, on this path only)."""
        pool = short[0][0]
        pool.refused += 1
        waits = []
        for p, _ in short:
            spent = None
            if p.period_s:
                try:
                    spent = await self.store.read(p.key() + ".spent") + p.unflushed
                except Exception:  # the store is down: say the window's end
                    spent = None
            waits.append(p.retry_after(now, spent, lim.units(p, tokens)))
        if pool.kind in (lim.TPM, lim.BUDGET):
            what = f"a request reserving {tokens} tokens (its prompt estimated + max_tokens)"
        else:
            what = "one more request"
        return errors.RateLimited(
            f"tenant {tenant!r} is over its {LABELS[pool.kind]} ({pool.limit}) for {what}",
            retry_after_s=max(waits),
        )

    async def _lease(self, pool: Pool, need: int) -> bool:
        """Lease more for ``pool``; False when the store failed (logged)."""
        try:
            if pool.kind == lim.CONCURRENT:
                total = pool.in_use + need + pool.limit // 16  # a spare only for big limits
                pool.balance = await self.store.hold(
                    pool.key(), self.holder, total, pool.limit, self.lease_s
                )
            else:
                # Not ``pool.balance += await ...``: that reads the balance before the
                # await and loses what other requests took or gave back meanwhile.
                granted = await self.store.take(pool.key(), pool.lease_size(need), pool.limit)
                pool.balance += granted
        except Exception as exc:
            self.store_errors += 1
            self._noisy.warning("limits-store", f"tenant limits store failed: {exc!r}")
            return False
        return True

    def views(self) -> list[TenantLimitView]:
        """Each tenant's limits at this gateway, as the read model ``fed.gateway.stats``
        and the metrics report."""
        out = []
        for tenant, pools in self.pools.items():
            for p in pools:
                p.roll(self.clock())
                concurrent = p.kind == lim.CONCURRENT
                out.append(
                    TenantLimitView(
                        tenant=tenant,
                        limit=p.kind,
                        max=p.limit,
                        used=p.in_use if concurrent else p.used,
                        held=p.free(),
                        refused=p.refused,
                    )
                )
        return out

    def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """The request ended having used ``used_tokens`` (prompt + completion). Slots held
        beyond what is in use (plus the spare) go back to the bucket at once, so that
        another gateway can admit the tenant's next request."""
        lim.settle(ticket, used_tokens)
        released = self._released.get(ticket.tenant)
        if released is not None:
            released.set()
        for pool, _ in ticket.pools:
            if pool.kind == lim.CONCURRENT and pool.balance > pool.in_use + pool.limit // 16:
                task = asyncio.get_running_loop().create_task(self._lease(pool, 0))
                self._shrinking.add(task)
                task.add_done_callback(self._shrinking.discard)

    async def renew_loop(self, tidy_s: float = 0.5) -> None:
        """Every ``tidy_s``: report what was spent, give back surplus counter leases; every
        ``lease_s / 3``: renew (and shrink) the concurrency holds."""
        last_renew = self.clock()
        while True:
            await asyncio.sleep(tidy_s)
            try:
                await self.tidy()
                if self.clock() - last_renew >= self.lease_s / 3:
                    last_renew = self.clock()
                    await self.renew()
            except Exception as exc:  # the store is down: try again next time
                self.store_errors += 1
                self._noisy.warning("limits-tidy", f"tenant limits store failed: {exc!r}")

    async def tidy(self) -> None:
        """Add what was spent here to the shared ``.spent`` counters, and give back what a
        counter holds beyond one lease (so that another gateway can use it)."""
        now = self.clock()
        for pools in list(self.pools.values()):
            for pool in pools:
                if not pool.period_s:
                    continue
                pool.roll(now)
                spent, pool.unflushed = pool.unflushed, 0
                if spent:
                    await self.store.add(pool.key() + ".spent", spent)
                # A refusal here since the last tidy: this gateway's remainder is too small
                # for what is asked; pooled again, it may cover a request somewhere.
                keep = 0 if pool.refused != pool.refused_seen else pool.lease_size(1)
                pool.refused_seen = pool.refused
                if pool.balance > keep:
                    surplus = pool.balance - keep // 2
                    pool.balance -= surplus
                    await self.store.give(pool.key(), surplus)

    async def renew(self) -> None:
        """One renewal of every concurrency hold."""
        for pools in list(self.pools.values()):
            for pool in pools:
                if pool.kind == lim.CONCURRENT and (pool.balance or pool.in_use):
                    await self._lease(pool, 0)

    async def close(self) -> None:
        """Give back what this gateway holds (best effort)."""
        for pools in list(self.pools.values()):
            for pool in pools:
                try:
                    if pool.kind == lim.CONCURRENT:
                        await self.store.hold(pool.key(), self.holder, 0, pool.limit, 0.0)
                    elif pool.balance > 0:
                        await self.store.give(pool.key(), pool.balance)
                        pool.balance = 0
                except Exception as exc:  # the store is gone: nothing to give back to
                    log.debug("could not give back %s: %r", pool.key(), exc)


__all__ = ["DegradingStore", "KvStore", "LeaseStore", "Limiter", "LocalStore", "key_tenant"]
