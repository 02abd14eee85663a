"""Every component connects with each NATS auth option: real server, real processes.

For each mode the server requires it, a ``fedgate gateway`` and a ``fedgate worker``
process join with the matching flags, and a Python client gets an answer; the same
client with wrong credentials is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trustme

from shared.client import FedClient
from shared.config import NatsConfig
from shared.connection import NatsUnavailable, connect
from shared.natsserver import NatsServer
from tests.helpers import Proc, eventually, processes
from tests.security.creds import Key, operator_setup
from worker.backends.synthetic import expected_text

pytestmark = pytest.mark.slow


@dataclass
class Mode:
    server_args: list[str]
    flags: list[str]
    """Flags given to the gateway and worker processes."""
    client: dict[str, Any]
    wrong: dict[str, Any]
    scheme: str = "nats"
    per_role: dict[str, list[str]] = field(default_factory=dict)


def make_mode(name: str, d: Path) -> Mode:
    if name == "user-password":
        return Mode(
            ["--user", "fed", "--pass", "s3cret"],
            ["--user", "fed", "--password", "s3cret"],
            {"user": "fed", "password": "s3cret"},
            {"user": "fed", "password": "nope"},
        )
    if name == "token":
        return Mode(
            ["--auth", "t0k3n"], ["--token", "t0k3n"], {"token": "t0k3n"}, {"token": "wrong"}
        )
    if name == "nkey":
        key, other = Key.new(nkeys.PREFIX_BYTE_USER), Key.new(nkeys.PREFIX_BYTE_USER)
        (d / "fed.nk").write_bytes(key.seed)
        (d / "other.nk").write_bytes(other.seed)
        (d / "nkey.conf").write_text(f"authorization {{ users = [ {{ nkey: {key.public} }} ] }}\n")
        return Mode(
            ["-c", str(d / "nkey.conf")],
            ["--nkey", str(d / "fed.nk")],
            {"nkey_seed": str(d / "fed.nk")},
            {"nkey_seed": str(d / "other.nk")},
        )
    if name == "tls":
        ca, rogue = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(d / "ca.pem"))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
        server.private_key_pem.write_to_path(str(d / "server.key"))
        for who, issuer in (("client", ca), ("rogue", rogue)):
            cert = issuer.issue_cert(f"fedgate-{who}")
            cert.cert_chain_pems[0].write_to_path(str(d / f"{who}.pem"))
            cert.private_key_pem.write_to_path(str(d / f"{who}.key"))
        tls = {
            "tls_ca": str(d / "ca.pem"),
            "tls_cert": str(d / "client.pem"),
            "tls_key": str(d / "client.key"),
        }
        return Mode(
            [
                "--tls",
                "--tlscert",
                str(d / "server.pem"),
                "--tlskey",
                str(d / "server.key"),
                "--tlscacert",
                str(d / "ca.pem"),
                "--tlsverify",
            ],
            ["--tls-ca", tls["tls_ca"], "--tls-cert", tls["tls_cert"], "--tls-key", tls["tls_key"]],
            tls,
            {**tls, "tls_cert": str(d / "rogue.pem"), "tls_key": str(d / "rogue.key")},
            scheme="tls",
        )
    if name == "creds":
        conf, creds = operator_setup(d, ["gateway", "worker", "client"])
        (d / "other").mkdir()
        _, other = operator_setup(d / "other", ["client"])  # another operator's user
        return Mode(
            ["-c", str(conf)],
            [],
            {"creds_file": str(creds["client"])},
            {"creds_file": str(other["client"])},
            per_role={
                "gateway": ["--creds", str(creds["gateway"])],
                "worker": ["--creds", str(creds["worker"])],
            },
        )
    raise AssertionError(name)


MODES = ["user-password", "token", "nkey", "tls", "creds"]


@pytest.fixture(params=MODES)
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Mode, str]]:
    mode = make_mode(request.param, tmp_path)
    server = NatsServer(data_dir=tmp_path / "nats", extra_args=mode.server_args)
    server.start()
    try:
        yield mode, f"{mode.scheme}://127.0.0.1:{server.port}"
    finally:
        server.cleanup()


async def test_components_connect_with_each_auth_option(secured: tuple[Mode, str]) -> None:
    mode, url = secured
    with processes() as procs:
        procs.append(
            Proc(
                "gateway",
                "--nats",
                url,
                "--gateway-id",
                "gw",
                *mode.flags,
                *mode.per_role.get("gateway", []),
            )
        )
        procs.append(
            Proc(
                "worker",
                "--nats",
                url,
                "--node-id",
                "w1",
                "--model",
                "m",
                "--heartbeat-interval",
                "0.2",
                *mode.flags,
                *mode.per_role.get("worker", []),
            )
        )
        nc = await connect(NatsConfig(url=url, connect_timeout_s=5, **mode.client))
        client = FedClient(nc)

        async def answered() -> bool:
            try:
                result = await client.infer("generate", "secure", timeout_ms=2000)
            except Exception:
                return False
            return result.output == expected_text("m", "secure") and result.served_by == "w1"

        await eventually(answered, 30, "served through an authenticated federation")
        async with client.stream("generate", "secure", params={"max_tokens": 20}) as s:
            assert "".join([c.text async for c in s]) == expected_text("m", "secure", None, 20)
        await nc.close()
        with pytest.raises(NatsUnavailable):
            await connect(NatsConfig(url=url, connect_timeout_s=2, **mode.wrong))
        assert all(p.proc.poll() is None for p in procs), "a component exited"
