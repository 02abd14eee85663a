"""The embedded nats-server: starts on a free port, serves, restarts on the same port."""

from __future__ import annotations

import asyncio

import nats
import pytest

from shared.natsserver import NatsServer, NatsServerError


async def test_server_round_trip(nats_server: NatsServer) -> None:
    assert nats_server.port > 0
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("ping")
        await nc.publish("ping", b"hello")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def test_restart_keeps_port(nats_server: NatsServer) -> None:
    port = nats_server.port
    nats_server.restart()
    assert nats_server.port == port
    nc = await nats.connect(nats_server.url)
    try:
        assert nc.is_connected
    finally:
        await nc.close()


def test_bad_flag_reports_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = NatsServer(data_dir=tmp_path, extra_args=["--no-such-flag"])
    with pytest.raises(NatsServerError):
        server.start(timeout_s=5)
    server.cleanup()


async def test_jetstream_enabled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with NatsServer(data_dir=tmp_path, jetstream=True) as server:
        nc = await nats.connect(server.url)
        try:
            info = await asyncio.wait_for(nc.jetstream().account_info(), 5)
            assert info is not None
        finally:
            await nc.close()
