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

If the store fails (JetStream down), requests are still admitted on what this gateway
already holds; one that needs a lease is refused ``503 unavailable`` (a limit is never
overshot because the store could not be asked; docs/tenants.md). ``LocalStore`` keeps
the allowance in-process (one gateway, or ``limits_store = "local"``: each gateway
enforces the limits alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gateway import limits as lim
from gateway.limits import Pool, Ticket
from shared import errors
from shared.config import TenantLimits
from shared.connection import RateLimitedLog
from shared.messages import TenantLimitView

log = logging.getLogger("fedgate.gateway")

BUCKET = "fedgate_limits"
BUCKET_TTL_S = 2 * 86_400.0
"""Keys live two days after their last write: longer than any window (at most a day)."""
CAS_TRIES = 32
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


class LeaseStore(Protocol):
    """Where gateways share allowances."""

    async def take(self, key: str, want: int, limit: int) -> int:
        """Lease up to ``want`` units of ``key`` (never beyond ``limit`` in total)."""

    async def give(self, key: str, amount: int) -> None:
        """Return ``amount`` unused units of ``key``."""

    async def add(self, key: str, amount: int) -> None:
        """Add ``amount`` to the counter ``key`` (what was spent)."""

    async def read(self, key: str) -> int:
        """The counter ``key`` (0 when absent)."""

    async def hold(self, key: str, holder: str, total: int, limit: int, lease_s: float) -> int:
        """Set ``holder``'s held slots to at most ``total`` (others' unexpired holds
        count against ``limit``) for ``lease_s``; returns the slots held."""


class LocalStore:
    """The allowance in this process (one gateway, or each gateway alone)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    async def take(self, key: str, want: int, limit: int) -> int:
        used = self.counters.get(key, 0)
        grant = max(0, min(want, limit - used))
        self.counters[key] = used + grant
        return grant

    async def give(self, key: str, amount: int) -> None:
        self.counters[key] = max(0, self.counters.get(key, 0) - amount)

    async def add(self, key: str, amount: int) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount

    async def read(self, key: str) -> int:
        return self.counters.get(key, 0)

    async def hold(self, key: str, holder: str, total: int, limit: int, lease_s: float) -> int:
        return max(0, min(total, limit))


class KvStore:
    """The allowance in the JetStream key-value bucket ``fedgate_limits`` (CAS updates)."""

    def __init__(self, kv: KeyValue, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock

    @classmethod
    async def open(cls, nc: Client) -> KvStore:
        """Bind the bucket, creating it on first use; raises ``errors.Unavailable`` with
        a hint when JetStream is not enabled on the server."""
        js = nc.jetstream()
        try:
            try:
                kv = await js.key_value(BUCKET)
            except BucketNotFoundError:
                kv = await js.create_key_value(bucket=BUCKET, history=1, ttl=BUCKET_TTL_S)
        except Exception as exc:
            raise errors.Unavailable(
                f"tenant limits need JetStream (nats-server -js) for the {BUCKET} bucket, or "
                f'limits_store = "local" (each gateway alone): {exc!r}'
            ) from exc
        return cls(kv)

    async def _read(self, key: str) -> tuple[bytes, int | None]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return b"", None
        return entry.value or b"", entry.revision

    async def _write(self, key: str, value: bytes, revision: int | None) -> bool:
        """Compare-and-set; False when another gateway wrote first."""
        try:
            if revision is None:
                await self.kv.create(key, value)
            else:
                await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def take(self, key: str, want: int, limit: int) -> int:
        for _ in range(CAS_TRIES):
            raw, rev = await self._read(key)
            used = int(raw or b"0")
            grant = max(0, min(want, limit - used))
            if grant == 0:
                return 0
            if await self._write(key, str(used + grant).encode(), rev):
                return grant
        raise errors.Unavailable(f"limits bucket: {key} too contended")

    async def give(self, key: str, amount: int) -> None:
        await self.add(key, -amount)

    async def add(self, key: str, amount: int) -> None:
        for _ in range(CAS_TRIES):
            raw, rev = await self._read(key)
            value = max(0, int(raw or b"0") + amount)
            if await self._write(key, str(value).encode(), rev):
                return

    async def read(self, key: str) -> int:
        raw, _ = await self._read(key)
        return int(raw or b"0")

    async def hold(self, key: str, holder: str, total: int, limit: int, lease_s: float) -> int:
        for _ in range(CAS_TRIES):
            raw, rev = await self._read(key)
            now = self.clock()
            holds: dict[str, list[float]] = json.loads(raw) if raw else {}
            live = {g: v for g, v in holds.items() if v[1] > now and g != holder}
            others = sum(int(v[0]) for v in live.values())
            granted = max(0, min(total, limit - others))
            live[holder] = [granted, now + lease_s]
            if await self._write(key, json.dumps(live).encode(), rev):
                return granted
        raise errors.Unavailable(f"limits bucket: {key} too contended")


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
            if short:
                raise await self._refusal(tenant, short, tokens, now)
        return lim.charge(tenant, pools, tokens)

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
        what = "max_tokens" if pool.kind in (lim.TPM, lim.BUDGET) else "a request"
        return errors.RateLimited(
            f"tenant {tenant!r} is over its {LABELS[pool.kind]} ({pool.limit}) "
            f"for {what} of {lim.units(pool, tokens)}",
            retry_after_s=max(waits),
        )

    async def _lease(self, pool: Pool, need: int) -> bool:
        """Lease more for ``pool``; False when the store failed (logged)."""
        try:
            if pool.kind == lim.CONCURRENT:
                total = pool.in_use + need + max(1, pool.limit // 16)
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
        """The request ended having used ``used_tokens`` (prompt + completion)."""
        lim.settle(ticket, used_tokens)

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
