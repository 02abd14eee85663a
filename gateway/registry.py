"""Where gateways register request identities: the JetStream key-value bucket
``fedgate_requests`` (docs/operations.md, "Shared state between gateways").

``KvRegistry``: the bucket's reads and compare-and-set writes of ``gateway.claims.Claim``
values (history 1, ``max_age`` = ``idempotency_ttl_s``). ``Registry``: the bucket while
it answers; when it does not (JetStream down, not enabled, too slow), None with one
warning — each gateway then knows only its own requests, as before, and never refuses
because of it — and the bucket again once it answers (tried every ``retry_s``, in the
background).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from gateway.claims import Claim, claim_decoder, claim_encoder

log = logging.getLogger("fedgate.gateway")

BUCKET = "fedgate_requests"
TIMEOUT_S = 1.0
"""Longest wait for one answer of JetStream: longer, and the request runs unregistered."""

_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
"""JetStream's compare-and-set header: the write applies only at that revision (0: new)."""
WRONG_LAST = (10071, 10164)
"""JetStream's error codes for a compare-and-set that lost (the last revision moved)."""

Spawn = Callable[[Coroutine[Any, Any, Any], str], None]


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish into the bucket (the fields read here)."""

    seq: int = 0
    error: dict[str, Any] | None = None


_puback = msgspec.json.Decoder(_PubAck)


class KvRegistry:
    """Claims in the bucket ``fedgate_requests``.

    A claim's creation waits for JetStream's acknowledgement (it decides who runs the
    request), read by hand: the hot path's one round trip. The writes at a request's
    end (done, delete) are published without waiting: JetStream applies them only if
    the revision is still the one the flight claimed (compare-and-set on the server),
    and a lost one leaves a claim that its TTL removes."""

    def __init__(self, nc: Client, kv: KeyValue, timeout_s: float = TIMEOUT_S) -> None:
        self.nc = nc
        self.kv = kv
        self.timeout_s = timeout_s
        self.prefix = f"$KV.{BUCKET}."
        """The bucket's subjects (JetStream's naming: one subject per key)."""

    @classmethod
    async def open(cls, nc: Client, ttl_s: float, timeout_s: float = TIMEOUT_S) -> KvRegistry:
        """Bind the bucket, creating it on first use (``max_age`` = ``ttl_s``)."""
        js = nc.jetstream(timeout=timeout_s)
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            try:
                kv = await js.create_key_value(bucket=BUCKET, history=1, ttl=ttl_s)
            except Exception:  # another gateway created it meanwhile (or a real failure)
                kv = await js.key_value(BUCKET)
        return cls(nc, kv, timeout_s)

    async def create(self, key: str, claim: Claim) -> int | None:
        """Register ``claim`` unless the key exists: its revision, or None."""
        data = claim_encoder.encode(claim)
        msg = await self.nc.request(
            self.prefix + key, data, timeout=self.timeout_s, headers={_EXPECTED: "0"}
        )
        ack = _puback.decode(msg.data)
        if ack.error is None:
            return ack.seq
        if ack.error.get("err_code") not in WRONG_LAST:
            raise APIError.from_error(ack.error)
        try:  # taken, or deleted (a tombstone: nats-py's create takes it over)
            return await self.kv.create(key, data)
        except KeyWrongLastSequenceError:
            return None

    async def read(self, key: str) -> tuple[Claim | None, int]:
        """The claim under ``key`` and its revision ((None, 0): none)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        try:
            return claim_decoder.decode(entry.value or b""), entry.revision or 0
        except msgspec.DecodeError:  # not a claim (written by hand?): as if absent
            return None, entry.revision or 0

    async def replace(self, key: str, claim: Claim, revision: int) -> int | None:
        """Write ``claim`` if ``revision`` is still the last: the new revision, or None
        (another gateway wrote first)."""
        try:
            return await self.kv.update(key, claim_encoder.encode(claim), last=revision)
        except KeyWrongLastSequenceError:
            return None

    async def replace_later(self, key: str, claim: Claim, revision: int) -> None:
        """``replace`` without waiting for the outcome."""
        headers = {_EXPECTED: str(revision)}
        await self.nc.publish(self.prefix + key, claim_encoder.encode(claim), headers=headers)

    async def delete_later(self, key: str, revision: int) -> None:
        """Delete the claim if ``revision`` is still the last, without waiting."""
        headers = {_EXPECTED: str(revision), "KV-Operation": "DEL"}
        await self.nc.publish(self.prefix + key, b"", headers=headers)


class Registry:
    """The bucket while it answers, else None: each gateway alone (one warning)."""

    def __init__(
        self,
        nc: Client,
        ttl_s: float,
        spawn: Spawn,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.ttl_s = ttl_s
        self.spawn = spawn
        self.retry_s = retry_s
        self.clock = clock
        self.kv: KvRegistry | None = None
        """The bucket, or None while it does not answer."""
        self.degraded = False
        """True while request identity is per gateway (a figure, and for tests)."""
        self._tried = -1e18
        self._opening = False

    async def open(self) -> None:
        """Bind the bucket now (at start); on failure, degrade and retry later."""
        self._opening = True
        self._tried = self.clock()
        try:
            self.kv = await KvRegistry.open(self.nc, self.ttl_s)
        except Exception as exc:
            self.failed(exc)
        else:
            if self.degraded:
                log.warning("request identity: the %s bucket answers again: shared", BUCKET)
            self.degraded = False
        finally:
            self._opening = False

    def current(self) -> KvRegistry | None:
        """The bucket, or None (then a reopen is tried in the background when due)."""
        kv = self.kv
        if kv is None and not self._opening and self.clock() - self._tried >= self.retry_s:
            self._tried = self.clock()
            self.spawn(self.open(), "registry-open")
        return kv

    def failed(self, exc: BaseException) -> None:
        """JetStream did not answer: each gateway alone until it does."""
        self.kv = None
        self._tried = self.clock()
        if not self.degraded:
            log.warning(
                "request identity: the %s bucket is unavailable (%r): a resend through "
                "another gateway may run again until it answers (requests are still served)",
                BUCKET, exc,
            )  # fmt: skip
        self.degraded = True
