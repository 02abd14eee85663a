"""Catalog: the reference catalog_tests plus heartbeats, incarnations, expiry, indexes."""

from __future__ import annotations

import pytest

from gateway.catalog import CatalogEvent, HeartbeatOutcome, ModelCatalog, NodeInfo
from gateway.clock import FakeClock
from shared.errors import Internal
from tests.core.util import hb

ALL_CAPS = ["transcribe", "synthesize", "generate", "code", "embed", "image_gen", "custom_task"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cat(clock: FakeClock) -> ModelCatalog:
    return ModelCatalog(clock=clock)


# -- reference tests ------------------------------------------------------------------


def test_register_and_find(cat: ModelCatalog) -> None:
    cat.register("whisper", "n1", "us-west", ["transcribe"])
    assert cat.find_by_capability("transcribe") == [("n1", "us-west")]


def test_deregister_last_deployment_removes_model(cat: ModelCatalog) -> None:
    cat.register("whisper", "n1", "us-west", ["transcribe"])
    cat.deregister("whisper", "n1")
    assert cat.list_all() == []
    assert cat.find_by_capability("transcribe") == []


def test_two_deployments(cat: ModelCatalog) -> None:
    cat.register("whisper", "n1", "us-west", ["transcribe"])
    cat.register("whisper", "n2", "eu-west", ["transcribe"])
    assert len(cat.find_by_capability("transcribe")) == 2


def test_custom_capability(cat: ModelCatalog) -> None:
    cat.register("sent", "n1", "us", ["sentiment"])
    assert len(cat.find_by_capability("sentiment")) == 1
    assert cat.find_by_capability("other") == []


def test_get_and_metadata(cat: ModelCatalog) -> None:
    cat.register("llama", "n1", "us", ["generate", "code"])
    entry = cat.get("llama")
    assert entry is not None and entry.model_id == "llama"
    meta = cat.get_metadata("llama")
    assert meta.name == "llama" and meta.version == "1.0.0"
    assert len(meta.capabilities) == 2
    assert cat.get("missing") is None
    with pytest.raises(Internal, match="Model not found"):
        cat.get_metadata("missing")


def test_all_entries_and_list_all_distinct(cat: ModelCatalog) -> None:
    cat.register("a", "n1", "r", ["generate"])
    cat.register("a", "n2", "r", ["generate"])
    cat.register("b", "n1", "r", ["embed"])
    cat.register("c", "n3", "r", ["code"])
    cat.register("c", "n4", "r", ["code"])
    assert len(cat.list_all()) == 3
    assert len(cat.all_entries()) == 3


def test_deregister_unknown_is_fine(cat: ModelCatalog) -> None:
    cat.deregister("nope", "n1")
    cat.register("a", "n1", "r", ["generate"])
    cat.deregister("a", "other")
    assert cat.list_all() == ["a"]


def test_partial_deregister_keeps_one(cat: ModelCatalog) -> None:
    cat.register("a", "n1", "r", ["generate"])
    cat.register("a", "n2", "r", ["generate"])
    cat.deregister("a", "n1")
    entry = cat.get("a")
    assert entry is not None and [d.node_id for d in entry.deployments] == ["n2"]


@pytest.mark.parametrize("cap", ALL_CAPS)
def test_every_capability_findable(cat: ModelCatalog, cap: str) -> None:
    cat.register("m", "n1", "r", [cap])
    assert cat.find_by_capability(cap) == [("n1", "r")]


# -- fixes over the reference -----------------------------------------------------------


def test_reregistration_updates_capabilities(cat: ModelCatalog) -> None:
    cat.register("m", "n1", "r", ["generate"])
    cat.register("m", "n1", "r", ["code"])
    assert cat.find_by_capability("generate") == []
    assert cat.find_by_capability("code") == [("n1", "r")]
    assert cat.get_metadata("m").capabilities == ["code"]


def test_reregister_after_deregister_no_duplicates(cat: ModelCatalog) -> None:
    cat.register("m", "n1", "r", ["generate"])
    cat.deregister("m", "n1")
    cat.register("m", "n1", "r", ["generate"])
    assert cat.find_by_capability("generate") == [("n1", "r")]


# -- heartbeats -------------------------------------------------------------------------


def test_heartbeat_new_updated(cat: ModelCatalog) -> None:
    assert cat.apply_heartbeat("n1", hb(region="eu", capacity=4, in_flight=2)) is (
        HeartbeatOutcome.NEW
    )
    node = cat.node("n1")
    assert node is not None and node.region == "eu" and node.load == 0.5
    assert cat.apply_heartbeat("n1", hb(region="eu", capacity=4, in_flight=3)) is (
        HeartbeatOutcome.UPDATED
    )
    assert node.in_flight == 3
    assert [n.node_id for n in cat.nodes_for("generate")] == ["n1"]
    assert [n.node_id for n in cat.nodes_for("generate", "m")] == ["n1"]
    assert cat.nodes_for("generate", "other") == []


def test_incarnations(cat: ModelCatalog) -> None:
    cat.apply_heartbeat("n1", hb("old", started_ms=100))
    cat.add_in_flight("n1", 2)
    assert cat.apply_heartbeat("n1", hb("new", started_ms=200)) is HeartbeatOutcome.REPLACED
    node = cat.node("n1")
    assert node is not None and node.incarnation == "new" and node.local_in_flight == 0
    # a replay of the retired incarnation, and an older unknown one, are stale
    assert cat.apply_heartbeat("n1", hb("old", started_ms=100)) is HeartbeatOutcome.STALE
    assert cat.apply_heartbeat("n1", hb("older", started_ms=50)) is HeartbeatOutcome.STALE
    assert cat.node("n1").incarnation == "new"  # type: ignore[union-attr]


def test_leave_and_late_heartbeat(cat: ModelCatalog) -> None:
    cat.apply_heartbeat("n1", hb("a"))
    assert not cat.remove_node("n1", "other")
    assert cat.node("n1") is not None
    assert cat.remove_node("n1", "a")
    assert cat.apply_heartbeat("n1", hb("a")) is HeartbeatOutcome.STALE
    assert cat.apply_heartbeat("n1", hb("b", started_ms=1)) is HeartbeatOutcome.NEW
    assert not cat.remove_node("ghost")


def test_expiry(cat: ModelCatalog, clock: FakeClock) -> None:
    cat.register("static", "s1", "r", ["generate"])
    cat.apply_heartbeat("n1", hb(interval_ms=1000))
    cat.apply_heartbeat("n2", hb(interval_ms=5000))
    clock.advance(3.5)
    assert cat.expire() == ["n1"]
    assert {n.node_id for n in cat.nodes()} == {"s1", "n2"}
    clock.advance(20)
    assert cat.expire() == ["n2"]
    assert cat.nodes_for("generate")[0].node_id == "s1"


def test_time_the_gateway_could_not_listen_is_no_nodes_silence(
    cat: ModelCatalog, clock: FakeClock
) -> None:
    """A blocked event loop (``stalled``) leaves heartbeats unread: that time does not
    count toward expiry; what the gateway does hear out still does."""
    cat.apply_heartbeat("n1", hb(interval_ms=200))  # expires after 0.6 s of silence
    cat.apply_heartbeat("n2", hb("i2", interval_ms=200))
    clock.advance(0.9)
    cat.stalled(0.85)  # the sweeper woke 0.85 s late
    assert cat.expire() == []
    cat.touch("n2")  # the unread heartbeat of n2, read at last
    node = cat.node("n2")
    assert node is not None and node.last_seen == clock.now  # the age shown stays true
    clock.advance(0.56)  # n1: 0.05 + 0.56 s heard of silence, n2: 0.56 s
    assert cat.expire() == ["n1"]
    clock.advance(0.02)
    cat.stalled(0)  # nothing to excuse
    cat.stalled(-0.1)
    assert cat.expire() == []
    clock.advance(0.03)
    assert cat.expire() == ["n2"]
    assert cat.deaf_s == pytest.approx(0.85)


def test_model_change_reindexes_and_notifies(cat: ModelCatalog) -> None:
    events: list[tuple[CatalogEvent, str]] = []
    cat.add_listener(lambda e, n: events.append((e, n.node_id)))
    cat.apply_heartbeat("n1", hb())
    cat.apply_heartbeat("n1", hb())
    cat.apply_heartbeat("n1", hb(models=(("x", ("embed",)),)))
    cat.apply_heartbeat("n1", hb(models=(("x", ("embed",)),), cost=0.9))
    assert events == [
        (CatalogEvent.ADDED, "n1"),
        (CatalogEvent.MOVED, "n1"),
        (CatalogEvent.CHANGED, "n1"),
    ]
    assert cat.nodes_for("generate") == []
    assert cat.list_all() == ["x"]


def test_load_counts_a_stale_heartbeat_only_for_the_other_gateways_part() -> None:
    """A heartbeat's in-flight count is a snapshot up to an interval old: the load is this
    gateway's exact count now plus what the heartbeat had beyond this gateway's count when
    it came (other gateways' requests), not the larger of the two."""
    cat = ModelCatalog()
    cat.apply_heartbeat("n", hb(capacity=64))
    for _ in range(15):
        cat.add_in_flight("n", 1)
    cat.apply_heartbeat("n", hb(capacity=64, in_flight=15))  # all 15 ours
    node = cat.node("n")
    assert node is not None and node.remote_in_flight == 0 and node.load == 15 / 64
    cat.add_in_flight("n", -15)  # the batch finished; the heartbeat still says 15
    assert node.load == 0.0  # was 15 / 64 until the next heartbeat
    # A heartbeat sent before the batch's answers came and read after them: the node
    # still counted 15, all this gateway's (it had 15 there within two intervals).
    cat.apply_heartbeat("n", hb(capacity=64, in_flight=15))
    assert node.remote_in_flight == 0 and node.load == 0.0  # was 15 phantom requests
    cat.apply_heartbeat("n", hb(capacity=64, in_flight=4))  # within two intervals of 15:
    assert node.remote_in_flight == 0  # could still be this gateway's, not counted
    cat.apply_heartbeat("n", hb(capacity=64, in_flight=4))  # 4 of another gateway's
    assert node.remote_in_flight == 4
    cat.add_in_flight("n", 2)
    assert node.load == 6 / 64
    cat.apply_heartbeat("n", hb(capacity=64, in_flight=7))  # 2 ours + 5 theirs
    assert node.remote_in_flight == 5 and node.load == 7 / 64


def test_in_flight_and_capacity() -> None:
    node = NodeInfo(node_id="n", capacity=2, remote_in_flight=1)
    assert not node.at_capacity and node.load == 0.5
    node.local_in_flight = 2
    assert node.at_capacity and node.load == 1.5  # ours and another gateway's
    cat = ModelCatalog()
    cat.apply_heartbeat("n", hb(capacity=2))
    cat.add_in_flight("n", -5)
    assert cat.node("n").local_in_flight == 0  # type: ignore[union-attr]
    cat.add_in_flight("ghost", 1)
