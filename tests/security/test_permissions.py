"""The shipped deploy/nats-server.conf: each role can do its job and nothing else.

The server runs that very file (passwords from the environment, as in production);
a gateway (in-process, to read its catalog) and a worker process join with their own
users and inbox prefixes, and services ask through the Python client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from gateway.service import GatewayService
from shared.client import FedClient
from shared.config import GatewayConfig, NatsConfig
from shared.connection import connect
from shared.natsserver import NatsServer
from tests.faults.load import stop_gateway
from tests.helpers import Proc, eventually, processes
from worker.backends.synthetic import expected_text

pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
PASSWORDS = {
    "gateway": "gw-pw",
    "w1": "w1-pw",
    "w2": "w2-pw",
    "svc-a": "a-pw",
    "svc-b": "b-pw",
    "monitor": "mon-pw",
}
PREFIX = {
    "gateway": "_INBOX_gw",
    "w1": "_INBOX_node.w1",
    "w2": "_INBOX_node.w2",
    "svc-a": "_INBOX_svc.a",
    "svc-b": "_INBOX_svc.b",
    "monitor": "_INBOX_mon",
}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    for user, password in PASSWORDS.items():
        monkeypatch.setenv(f"FEDGATE_{user.replace('-', '_').upper()}_PASSWORD", password)
    srv = NatsServer(data_dir=tmp_path / "nats", extra_args=["-c", str(CONF)])
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


def cfg(url: str, user: str) -> NatsConfig:
    return NatsConfig(url=url, user=user, password=PASSWORDS[user], inbox_prefix=PREFIX[user])


class Violations:
    """Collects the server's -ERR permission messages seen by one connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    def about(self, subject: str) -> bool:
        # nats-py lower-cases the server's "-ERR 'Permissions Violation for ... to "subj"'"
        return any("permissions violation" in s and f'"{subject.lower()}"' in s for s in self.seen)


async def raw(url: str, user: str, violations: Violations) -> nats.NATS:
    return await nats.connect(
        url,
        user=user,
        password=PASSWORDS[user],
        inbox_prefix=PREFIX[user],
        error_cb=violations.record,
        max_reconnect_attempts=1,
        connect_timeout=2,
    )


async def test_roles_serve_and_cannot_step_outside(server: NatsServer) -> None:
    url = server.url
    gw_nc = await connect(cfg(url, "gateway"), service=True, wait_s=10)
    svc = GatewayService(gw_nc, GatewayConfig(gateway_id="gw", probe_interval_s=60))
    await svc.start()
    with processes() as procs:
        procs.append(
            Proc(
                "worker",
                "--nats",
                url,
                "--user",
                "w1",
                "--password",
                PASSWORDS["w1"],
                "--inbox-prefix",
                PREFIX["w1"],
                "--node-id",
                "w1",
                "--model",
                "m",
                "--heartbeat-interval",
                "0.2",
            )
        )
        await eventually(lambda: svc.catalog.node("w1") is not None, 30, "w1 joined")

        # Services are served, streams of many chunks included (allow_responses max).
        svc_a = FedClient(await connect(cfg(url, "svc-a")))
        assert (await svc_a.infer("generate", "hi")).output == expected_text("m", "hi")
        async with svc_a.stream("generate", "long", params={"max_tokens": 300}) as s:
            assert "".join([c.text async for c in s]) == expected_text("m", "long", None, 300)

        # A worker's credentials cannot speak for another node.
        w2_errors = Violations()
        w2 = await raw(url, "w2", w2_errors)
        real = svc.catalog.node("w1")
        assert real is not None
        forged = (
            b'{"incarnation": "forged", "region": "evil", "capacity": 99, "models": '
            b'[{"model": "m", "capabilities": ["generate"]}], "started_ms": 99999999999999}'
        )
        await w2.publish("fed.heartbeat.w1", forged)
        await w2.publish("fed.heartbeat.evil", forged)
        await w2.subscribe("fed.node.w1.infer")
        await w2.flush()
        await eventually(
            lambda: (
                w2_errors.about("fed.heartbeat.w1")
                and w2_errors.about("fed.heartbeat.evil")
                and w2_errors.about("fed.node.w1.infer")
            ),
            5,
            "violations reported",
        )
        await gw_nc.flush()
        assert svc.catalog.node("evil") is None
        node = svc.catalog.node("w1")
        assert node is not None and node.incarnation == real.incarnation and node.region != "evil"
        assert [n.node_id for n in svc.catalog.nodes()] == ["w1"]

        # A service cannot read another tenant's replies, nor listen to requests.
        b_errors = Violations()
        svc_b = await raw(url, "svc-b", b_errors)
        spy = await svc_b.subscribe("_INBOX_svc.a.>")
        await svc_b.subscribe("infer.>")
        await svc_b.subscribe("fed.heartbeat.*")
        await svc_b.flush()
        await eventually(
            lambda: (
                b_errors.about("_INBOX_svc.a.>")
                and b_errors.about("infer.>")
                and b_errors.about("fed.heartbeat.*")
            ),
            5,
            "violations reported",
        )
        assert (await svc_a.infer("generate", "private")).output == expected_text("m", "private")
        await svc_b.flush()
        assert spy.pending_msgs == 0
        # ... nor publish where only gateways and workers may.
        await svc_b.publish("fed.node.w1.infer", b"{}")
        await svc_b.publish("fed.heartbeat.w1", b"{}")
        await svc_b.flush()
        await eventually(
            lambda: b_errors.about("fed.node.w1.infer") and b_errors.about("fed.heartbeat.w1"),
            5,
            "violations reported",
        )

        # The gateway's intake accepts only its queue group.
        gw_errors = Violations()
        gw2 = await raw(url, "gateway", gw_errors)
        await gw2.subscribe("infer.>")  # no queue group: refused
        await gw2.flush()
        await eventually(lambda: gw_errors.about("infer.>"), 5, "queue-less intake refused")
        print(
            f"[permissions] violations reported: w2={len(w2_errors.seen)} "
            f"svc-b={len(b_errors.seen)} gateway-without-queue={len(gw_errors.seen)}"
        )
        for c in (w2, svc_b, gw2, svc_a.nc):
            await c.close()
    await stop_gateway(svc, gw_nc)
