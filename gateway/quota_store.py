"""Where gateways share tenant allowances (gateway/quota.py leases from them).

``KvStore``: the JetStream key-value bucket ``fedgate_limits``, updated by
compare-and-set. ``LocalStore``: in this process (one gateway, or each gateway alone).
``DegradingStore``: the bucket while it answers; when it does not (JetStream down or not
enabled), this gateway's own ``LocalStore`` with a warning — per-gateway limits, never
none and never a refusal of everything — and the bucket again once it answers (tried
every ``retry_s``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import errors

log = logging.getLogger("fedgate.gateway")
T = TypeVar("T")

BUCKET = "fedgate_limits"
BUCKET_TTL_S = 2 * 86_400.0
"""Keys live two days after their last write: longer than any window (at most a day)."""
CAS_TRIES = 32


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


class DegradingStore:
    """The bucket while it answers, else this gateway's own allowance (docs/tenants.md).

    Leases taken locally while degraded are this gateway's alone: N gateways may admit
    up to N times a limit until the bucket is back."""

    def __init__(
        self, nc: Client, retry_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.nc = nc
        self.retry_s = retry_s
        self.clock = clock
        self.kv: KvStore | None = None
        self.local = LocalStore()
        self.degraded = False
        """True while the limits are this gateway's alone (a figure, and for tests)."""
        self._tried = -1e18

    async def _kv(self) -> KvStore | None:
        if self.kv is None and self.clock() - self._tried >= self.retry_s:
            self._tried = self.clock()
            try:
                self.kv = await KvStore.open(self.nc)
            except errors.Unavailable as exc:
                self._degrade(exc)
            else:
                if self.degraded:
                    log.warning("tenant limits: the %s bucket answers again: shared limits", BUCKET)
                self.degraded = False
        return self.kv

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            log.warning(
                "tenant limits: the %s bucket is unavailable (%r): each gateway enforces the "
                "limits alone until it answers again", BUCKET, exc,
            )  # fmt: skip
        self.degraded = True

    async def _either(
        self, shared: Callable[[KvStore], Awaitable[T]], alone: Callable[[], Awaitable[T]]
    ) -> T:
        kv = await self._kv()
        if kv is not None:
            try:
                return await shared(kv)
            except Exception as exc:  # JetStream went away: alone until it is back
                self.kv, self._tried = None, self.clock()
                self._degrade(exc)
        return await alone()

    async def take(self, key: str, want: int, limit: int) -> int:
        return await self._either(
            lambda kv: kv.take(key, want, limit), lambda: self.local.take(key, want, limit)
        )

    async def give(self, key: str, amount: int) -> None:
        await self._either(lambda kv: kv.give(key, amount), lambda: self.local.give(key, amount))

    async def add(self, key: str, amount: int) -> None:
        await self._either(lambda kv: kv.add(key, amount), lambda: self.local.add(key, amount))

    async def read(self, key: str) -> int:
        return await self._either(lambda kv: kv.read(key), lambda: self.local.read(key))

    async def hold(self, key: str, holder: str, total: int, limit: int, lease_s: float) -> int:
        return await self._either(
            lambda kv: kv.hold(key, holder, total, limit, lease_s),
            lambda: self.local.hold(key, holder, total, limit, lease_s),
        )
