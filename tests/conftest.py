"""Shared fixtures: one real nats-server per test on an OS-chosen port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from shared.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def js_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of its own with JetStream (the KV buckets of limits and identity)."""
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats-js"), jetstream=True)
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, max_reconnect_attempts=2, reconnect_time_wait=0.1)
    try:
        yield client
    finally:
        await client.close()
