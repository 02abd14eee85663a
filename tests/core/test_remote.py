"""What other gateways said (gateway/core/remote.py): holds, expiry, waiting lists."""

from __future__ import annotations

from gateway.core.remote import RemoteHolds, RemoteWaiting

NOW = 1000.0


def test_updates_name_the_nodes_to_reconcile() -> None:
    h = RemoteHolds()
    assert h.update("gw-1", {"n1": 2}, NOW) == {"n1"}
    assert h.update("gw-2", {"n1": 1, "n2": 1}, NOW) == {"n1", "n2"}
    assert (h.held("n1"), h.held("n2"), h.held("n3")) == (3, 1, 0)
    assert h.update("gw-1", {"n1": 2}, NOW) == {"n1"}  # the same: reconciled again
    assert h.update("gw-1", {"n1": 1, "n3": 0}, NOW) == {"n1"}
    assert h.update("gw-1", {}, NOW) == {"n1"}
    assert h.held("n1") == 1


def test_a_silent_gateway_holds_nothing_after_the_ttl() -> None:
    h = RemoteHolds(ttl_s=2.0)
    h.update("gw-1", {"n1": 2}, NOW)
    h.update("gw-2", {"n1": 1}, NOW + 1.5)
    assert h.expire(NOW + 2.0) == set()
    assert h.expire(NOW + 2.5) == {"n1"}
    assert h.held("n1") == 1


def test_waiting_lists_replace_each_other_and_go_stale() -> None:
    w = RemoteWaiting(ttl_s=0.5)
    assert not w
    w.update("gw-1", [("a", "generate", "", 0.25), ("b", "embed", "e5", 0.0)], NOW)
    w.update("gw-2", [("c", "generate", "", 0.0)], NOW + 0.3)
    assert sorted(w.tenants(("generate", ""), NOW + 0.4)) == [("a", NOW - 0.25), ("c", NOW + 0.3)]
    assert list(w.tenants(("embed", "e5"), NOW + 0.4)) == [("b", NOW)]
    assert w.everyone(NOW + 0.4) == {"a", "b", "c"}
    w.update("gw-1", [], NOW + 0.4)  # nothing waits there any more
    assert list(w.tenants(("generate", ""), NOW + 0.4)) == [("c", NOW + 0.3)]
    assert list(w.tenants(("generate", ""), NOW + 0.9)) == []  # gw-2 silent for 0.6 s
    assert not w
