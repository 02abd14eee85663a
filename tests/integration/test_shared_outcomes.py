"""Several gateways agree on the fleet: outcomes shared on fed.outcomes (issue 15, 1).

Three gateways of one queue group on a real nats-server; nodes played over raw NATS.
"""

from __future__ import annotations

import json
import time

import msgspec

from gateway.breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from gateway.health import HealthChecker, HealthConfig, HealthState
from gateway.shared_outcomes import SharedOutcomes
from shared.messages import OutcomeBatch, OutcomeEvent
from tests.helpers import eventually, federation
from tests.integration.test_blame import nodes, request
from tests.integration.test_protocol import fast
from tests.rawnode import canary_ok, echo, error


async def test_a_failing_node_is_excluded_by_every_gateway_after_threshold_in_total(
    nats_url: str,
) -> None:
    """threshold failures in total (whichever gateways saw them) open the node's circuit
    on all three gateways; without sharing, a gateway that saw fewer would keep it."""
    async with federation(nats_url) as fed:
        threshold = 3
        config = fast(breaker_failure_threshold=threshold, breaker_reset_timeout_s=60.0)
        gws = [await fed.gateway(config) for _ in range(3)]
        bad = error(500, "internal", "engine crashed")
        await nodes(fed, bad=bad)
        nc = await fed.client()
        for i in range(threshold):
            msg = await request(nc, {"input": f"hello {i}"})
            assert (msg.headers or {}).get("Fed-Error"), msg.headers
        seen_at = time.monotonic()
        await eventually(
            lambda: all(gw.breaker.state("bad") is CircuitState.OPEN for gw in gws), 2.0
        )
        lag_ms = (time.monotonic() - seen_at) * 1000
        print(f"excluded by all 3 gateways {lag_ms:.1f} ms after the last failure's answer")
        assert sum(gw.outcomes.applied for gw in gws if gw.outcomes) >= 2 * threshold


async def test_a_canary_is_sent_once_not_once_per_gateway(nats_url: str) -> None:
    """An excluded node is re-tested by one canary per check interval across the queue
    group, not one per gateway."""
    async with federation(nats_url) as fed:
        config = fast(probe_interval_s=0.05, health_check_interval_s=0.6)
        for _ in range(3):
            await fed.gateway(config)
        # A node that answers nothing but canaries, and answers those with a failure:
        # it stays excluded, so it stays due for a canary every check interval.
        down = error(500, "internal", "down")
        ns = await nodes(fed, down=down)
        node = ns["down"]
        await eventually(lambda: len(node.canaries) >= 1, 5.0)
        start, first = time.monotonic(), len(node.canaries)
        window_s = 3.0
        await eventually(lambda: time.monotonic() - start >= window_s, window_s + 2)
        sent = len(node.canaries) - first
        per_interval = sent / (window_s / 0.6)
        print(f"{sent} canaries in {window_s:.0f} s: {per_interval:.2f} per check interval")
        # One gateway's worth is 5 (+1 at a window edge); three gateways unaware of each
        # other send about 15.
        assert sent <= 8, sent


async def test_successes_elsewhere_bring_a_node_back_everywhere(nats_url: str) -> None:
    """A canary answered at one gateway tells the others: the node returns on all."""
    async with federation(nats_url) as fed:
        config = fast(
            probe_interval_s=0.05, health_check_interval_s=0.3, breaker_failure_threshold=2,
            health_failure_threshold=2,
        )  # fmt: skip
        gws = [await fed.gateway(config) for _ in range(3)]
        flaky = {"fail": True}

        async def behave(node, dispatch, reply):  # type: ignore[no-untyped-def]
            if flaky["fail"]:
                await error(500, "internal", "down")(node, dispatch, reply)
            else:
                await canary_ok(echo)(node, dispatch, reply)

        await nodes(fed, n=behave)
        await eventually(
            lambda: all(
                (s := gw.health.get_cached_health("n")) is not None
                and s.status is HealthState.UNHEALTHY
                for gw in gws
            ),
            5.0,
        )
        flaky["fail"] = False
        await eventually(
            lambda: all(
                (s := gw.health.get_cached_health("n")) is not None
                and s.status is not HealthState.UNHEALTHY
                for gw in gws
            ),
            5.0,
        )


def _pair(reset_s: float = 30.0) -> tuple[HealthChecker, CircuitBreaker, SharedOutcomes]:
    health = HealthChecker(HealthConfig(failure_threshold=3))
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3, reset_timeout_s=reset_s))
    share = SharedOutcomes(
        None,  # type: ignore[arg-type]  (apply() does no I/O)
        "fed.outcomes", "gw-a", health, breaker, lambda coro, name: coro.close(),
    )  # fmt: skip
    return health, breaker, share


def test_apply_counts_other_gateways_failures_and_skips_unknown_nodes() -> None:
    health, breaker, share = _pair()
    health.register_node("n")
    share.apply([OutcomeEvent("ghost", "fail"), OutcomeEvent("n", "fail")])
    assert breaker.failures("n") == 1 and breaker.failures("ghost") == 0
    share.apply([OutcomeEvent("n", "fail"), OutcomeEvent("n", "fail")])
    assert breaker.state("n") is CircuitState.OPEN
    assert health.get_cached_health("n").status is HealthState.UNHEALTHY  # type: ignore[union-attr]
    assert share.applied == 3


def test_a_remote_outcome_never_releases_a_local_probe_slot() -> None:
    health, breaker, share = _pair(reset_s=0.0)  # OPEN -> HALF_OPEN at once
    health.register_node("n")
    for _ in range(3):
        breaker.record_failure("n")
    assert breaker.try_acquire("n")  # this gateway's own half-open probe holds the slot
    share.apply([OutcomeEvent("n", "ok", 0.1, 3, 0.01)])
    # another gateway's success counts, but the slot stays held by our own attempt
    assert not breaker.admits("n")


def test_the_wire_form_is_compact_and_decodes() -> None:
    batch = OutcomeBatch(gateway_id="gw-a", events=[OutcomeEvent("n", "ok", 0.25, 12, 0.05)])
    data = msgspec.json.encode(batch)
    assert json.loads(data) == {"gateway_id": "gw-a", "events": [["n", "ok", 0.25, 12, 0.05]]}
    assert msgspec.json.decode(data, type=OutcomeBatch) == batch
