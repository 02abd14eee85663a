"""Bad input: fuzzed request bodies, hostile subjects and sizes, spoofed and replayed heartbeats.

Everything gets its contract error (or is ignored, for heartbeats), and afterwards the
gateway still answers a valid request.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import nats.errors
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from gateway.service import GatewayService
from shared import messages as m
from tests.helpers import Federation, eventually, federation
from worker.node import Node

CONTRACT_ERRORS = {
    "400": "bad_request",
    "403": "policy_violation",
    "404": "no_capacity",
    "409": "duplicate",
    "429": "overloaded",
    "499": "cancelled",
    "500": "internal",
    "502": "interrupted",
    "503": "all_unhealthy",
    "504": "timeout",
}

FIELDS = [
    "input",
    "data",
    "model",
    "stream",
    "request_id",
    "tenant_id",
    "qos",
    "params",
    "timeout_ms",
    "capability",
    "unknown_field",
]
QOS_FIELDS = [
    "max_latency_ms",
    "min_throughput",
    "privacy",
    "prefer_gpu",
    "cost_tolerance",
    "region",
    "allowed_regions",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
qos_values = st.dictionaries(st.sampled_from(QOS_FIELDS), json_values, max_size=4)
request_like = st.dictionaries(
    st.sampled_from(FIELDS), json_values | qos_values, max_size=len(FIELDS)
).map(lambda d: json.dumps(d).encode())
bodies = st.binary(max_size=512) | request_like | json_values.map(lambda v: json.dumps(v).encode())


def known_decoder_bug(raw: bytes) -> bool:
    """Inputs that used to escape the decoder: invalid UTF-8, nesting past the limit."""
    try:
        m.request_decoder.decode(raw)
    except (UnicodeDecodeError, RecursionError):
        return True
    except msgspec.DecodeError:
        pass
    return False


@settings(max_examples=300, deadline=None)
@given(raw=bodies)
@example(raw=b"")
@example(raw=b'{"input": "' + b"x" * 100_000 + b'"}')
@example(raw=b'{"params": {"a": ' + b"[" * 200 + b"]" * 200 + b"}}")
@example(raw=b'{"qos": {"max_latency_ms": -5, "cost_tolerance": 1e300}}')
def test_request_decoder_raises_only_decode_errors(raw: bytes) -> None:
    assume(not known_decoder_bug(raw))
    try:
        m.request_decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        pass


@pytest.mark.parametrize(
    "raw",
    [b'{"input": "\xff"}', b'{"params": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"],
    ids=["invalid-utf8-in-string", "nesting-5000"],
)
def test_request_decoder_rejects_invalid_utf8_and_deep_nesting(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        m.request_decoder.decode(raw)


# -- the live endpoint -----------------------------------------------------------------


async def serving(fed: Federation, **gw: Any) -> tuple[GatewayService, Node]:
    svc = await fed.gateway(probe_interval_s=60, **gw)
    node = await fed.node("n1", models={"m": ("generate",)}, region="eu")
    await fed.seen("n1")
    return svc, node


def kind_of(msg: Any) -> str:
    """'ok' for a result, else the error kind (checking the contract's error shape)."""
    hdrs = msg.headers or {}
    if "Nats-Service-Error-Code" not in hdrs:
        assert json.loads(msg.data)["output"] is not None
        return "ok"
    code = hdrs["Nats-Service-Error-Code"]
    assert msg.data == b"" and hdrs.get("Nats-Service-Error"), hdrs
    assert CONTRACT_ERRORS[code] == hdrs["Fed-Error"], hdrs
    return hdrs["Fed-Error"]


async def assert_still_serves(nc: Client) -> None:
    msg = await nc.request("infer.generate", b'{"input": "still there?"}', timeout=5)
    assert kind_of(msg) == "ok"


@pytest.fixture
async def fed(nats_url: str) -> Any:
    async with federation(nats_url) as f:
        yield f


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=bodies)
async def test_live_endpoint_answers_every_fuzzed_body(
    fed: Federation, nc: Client, raw: bytes
) -> None:
    assume(not known_decoder_bug(raw))
    if not fed.gateways:
        await serving(fed)
    msg = await nc.request("infer.generate", raw, timeout=5)
    assert kind_of(msg) in (
        "ok",
        "bad_request",
        "no_capacity",
        "all_unhealthy",
        "policy_violation",
        "timeout",
    )


BAD = [
    ("infer.generate", b"not json", "bad_request"),
    ("infer.generate", b"[1, 2]", "bad_request"),
    ("infer.generate", b'{"input": 5}', "bad_request"),
    ("infer.generate", b'{"stream": "yes"}', "bad_request"),
    ("infer.generate", b'{"request_id": "no spaces!"}', "bad_request"),
    ("infer.generate", json.dumps({"request_id": "x" * 129}).encode(), "bad_request"),
    ("infer.generate", b'{"timeout_ms": 0}', "bad_request"),
    ("infer.generate", b'{"timeout_ms": 1000000000000}', "bad_request"),
    ("infer.generate", b'{"qos": {"max_latency_ms": -1}}', "bad_request"),
    ("infer.generate", b'{"qos": {"cost_tolerance": 1000}}', "bad_request"),
    ("infer.generate", b'{"qos": {"min_throughput": -3.5}}', "bad_request"),
    ("infer.generate", b'{"qos": {"privacy": "top-secret"}}', "bad_request"),
    ("infer.generate", b'{"qos": {"allowed_regions": []}}', "bad_request"),
    ("infer.generate", b'{"qos": "fast"}', "bad_request"),
    ("infer.generate", b'{"model": "' + b"m" * 300 + b'"}', "bad_request"),
    ("infer.generate", b'{"params": [1]}', "bad_request"),
    ("infer.generate", b'{"data": "not base64!"}', "bad_request"),
    ("infer.Generate", b"{}", "bad_request"),
    ("infer.gen!", b"{}", "bad_request"),
    ("infer.generate.extra", b"{}", "bad_request"),
    ("infer.sentiment", b"{}", "no_capacity"),
    ("infer.generate", b'{"model": "nope"}', "no_capacity"),
    ("infer.generate", b'{"qos": {"allowed_regions": ["mars"]}}', "policy_violation"),
    ("infer.generate", b'{"qos": {"privacy": "restricted"}}', "policy_violation"),
    ("infer.generate", b'{"unknown": {"deep": [1, 2, 3]}, "input": "x"}', "ok"),
    ("infer.generate", b"", "ok"),
    ("infer.generate", b'{"params": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}", "ok"),
]


async def test_hostile_requests_get_their_contract_errors(fed: Federation, nc: Client) -> None:
    await serving(fed, max_payload_bytes=64 * 1024)
    got = {}
    for subject, raw, _ in BAD:
        got[(subject, raw[:40])] = kind_of(await nc.request(subject, raw, timeout=5))
    want = {(s, r[:40]): k for s, r, k in BAD}
    assert got == want
    # Over the gateway's max_payload_bytes (and just under the server's 1 MiB): 400.
    for size in (64 * 1024 + 1, 1024 * 1024 - 4096):
        big = b'{"input": "' + b"x" * (size - 13) + b'"}'
        assert kind_of(await nc.request("infer.generate", big, timeout=5)) == "bad_request"
    # Over the server's max_payload: refused by the client library, never sent.
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.request("infer.generate", b"x" * (nc.max_payload + 1), timeout=5)
    await assert_still_serves(nc)


@pytest.mark.parametrize(
    "raw",
    [b'{"input": "\xff\xfe"}', b'{"params": {"a": ' + b"[" * 3000 + b"]" * 3000 + b"}}"],
    ids=["invalid-utf8", "deep-nesting"],
)
async def test_undecodable_bodies_get_a_400(fed: Federation, nc: Client, raw: bytes) -> None:
    await serving(fed)
    msg = await nc.request("infer.generate", raw, timeout=2)
    assert kind_of(msg) == "bad_request"


# -- heartbeats --------------------------------------------------------------------------


def heartbeat(node_id: str | None, incarnation: str = "fake", **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "incarnation": incarnation,
        "region": "eu",
        "capacity": 8,
        "models": [{"model": "m", "capabilities": ["generate"]}],
        "interval_ms": 1000,
        **extra,
    }
    if node_id is not None:
        body["node_id"] = node_id
    return json.dumps(body).encode()


async def test_spoofed_and_flooded_heartbeats_are_ignored(fed: Federation, nc: Client) -> None:
    svc, node = await serving(fed)
    junk = [
        b"",
        b"not json",
        b"[]",
        b'{"incarnation": 5}',
        b'{"capacity": -1, "incarnation": "x"}',
        heartbeat("n1", capacity=0),
        heartbeat("n1", interval_ms=1),
        heartbeat("n1", cost=7),
        heartbeat("n1", models=[{"model": "m", "capabilities": ["a.b"]}]),
    ]
    for i in range(3000):
        # Spoofed: the body claims a node the subject does not name (either way round).
        await nc.publish(f"fed.heartbeat.evil{i % 50}", heartbeat("n1", f"spoof{i}"))
        await nc.publish("fed.heartbeat.n1", heartbeat(f"evil{i % 50}", f"spoof{i}"))
        await nc.publish("fed.heartbeat.n1", junk[i % len(junk)])
    await nc.flush()
    await svc.nc.flush()
    assert [n.node_id for n in svc.catalog.nodes()] == ["n1"]
    assert svc.catalog.node("n1").incarnation == node.incarnation  # type: ignore[union-attr]
    await assert_still_serves(nc)


async def test_replayed_old_incarnation_is_ignored(fed: Federation, nc: Client) -> None:
    svc, old = await serving(fed)
    captured = await nc.subscribe("fed.heartbeat.n1")
    await nc.flush()
    old_beat = (await captured.next_msg(timeout=5)).data
    await captured.unsubscribe()
    # The process dies without leaving (as SIGKILL would) and restarts: a new incarnation.
    await old.nc.close()
    new = Node(
        await fed.client(),
        old.backend,
        node_id="n1",
        region="eu",
        models={"m": ("generate",)},
        heartbeat_interval_s=0.2,
    )
    await new.start()
    await eventually(
        lambda: svc.catalog.node("n1").incarnation == new.incarnation,  # type: ignore[union-attr]
        5,
        "new incarnation",
    )
    for _ in range(500):
        await nc.publish("fed.heartbeat.n1", old_beat)
    await nc.flush()
    await svc.nc.flush()
    assert svc.catalog.node("n1").incarnation == new.incarnation  # type: ignore[union-attr]
    msg = await nc.request("infer.generate", b'{"input": "who?"}', timeout=5)
    assert kind_of(msg) == "ok"
    await new.stop()
