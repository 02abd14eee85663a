"""The registry's degradation (gateway/registry.py): JetStream away means per-gateway
identity with one warning, never a refusal; the bucket is used again once it answers.
No server: the bucket's opening is scripted, the clock is fake."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.registry import KvRegistry, Registry


class Opening:
    """Scripted ``KvRegistry.open``: fails while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def __call__(self, nc: Any, ttl_s: float, timeout_s: float = 0.5) -> KvRegistry:
        self.calls += 1
        if self.down:
            raise ConnectionError("nats: no responders available for request")
        return KvRegistry(None, None)  # type: ignore[arg-type]


async def test_jetstream_away_degrades_once_and_comes_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opening = Opening()
    monkeypatch.setattr(KvRegistry, "open", opening)
    clock = FakeClock()
    spawned: list[Coroutine[Any, Any, Any]] = []
    registry = Registry(None, 600.0, lambda coro, _: spawned.append(coro), 5.0, clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="fedgate.gateway"):
        await registry.open()
        assert registry.degraded and registry.current() is None
        assert not spawned  # not due yet: requests are not slowed by retries
        clock.advance(5.0)
        assert registry.current() is None and len(spawned) == 1
        assert registry.current() is None and len(spawned) == 1  # one retry at a time
        await spawned.pop()  # still down: no second warning
        registry.failed(TimeoutError())  # a claim timed out meanwhile: no warning either
        opening.down = False
        clock.advance(5.0)
        registry.current()
        await spawned.pop()
        assert not registry.degraded and registry.current() is not None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("bucket is unavailable" in msg for msg in messages) == 1, messages
    assert sum("answers again" in msg for msg in messages) == 1, messages
    assert opening.calls == 3
