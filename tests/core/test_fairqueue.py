"""The capacity queue's fair share (gateway/core/fairqueue.py): pure, times as arguments.

A miniature server drives it: ``slots`` requests run at once, each for one time unit;
the queue picks who runs next, charges at dispatch and settles at the end, as the engine
does. Two tenants, one sending ten times the other, share the slots evenly while both
wait; weights, priority classes, the lift and the fleet-wide parts each get a test.
"""

from __future__ import annotations

from collections import Counter, deque

import pytest

from gateway.core.fairqueue import FairQueue
from gateway.core.flight import Flight
from gateway.core.table import FlightTable
from gateway.core.vtc import W_IN, W_OUT
from shared import messages as m

NOW = 1000.0
_table = FlightTable("_INBOX.t", "job")


def flight(
    tenant: str, max_tokens: int = 100, prompt: str = "x" * 30, capability: str = "generate",
    now: float = NOW,
) -> Flight:  # fmt: skip
    """A flight of ``tenant`` (prompt 30 bytes: 10 tokens estimated)."""
    request = m.InferRequest(
        input=prompt, tenant_id=tenant, capability=capability, params={"max_tokens": max_tokens}
    )
    f = _table.open(request, b"{}", f"r{len(_table.flights)}", "reply", now, 60.0)
    f.enqueue(now)
    return f


def serve(q: FairQueue, demand: dict[str, int], slots: int = 2, rounds: int = 200) -> Counter[str]:
    """Keep ``demand[t]`` requests of each tenant outstanding (closed loop, the queue's
    head dispatched whenever a slot frees, one time unit per request); completions."""
    done: Counter[str] = Counter()
    now = NOW
    for tenant, n in demand.items():
        for _ in range(n):
            q.append(flight(tenant, now=now))
    running: deque[Flight] = deque()
    for _ in range(rounds):
        while len(running) < slots and q:
            f = q.pop(now)
            assert f is not None
            q.charge(f, now)
            running.append(f)
        now += 1.0 / slots
        f = running.popleft()
        q.settle(f, 10, 100)  # what the node reported: as estimated
        tenant = f.ident[0]
        done[tenant] += 1
        nxt = flight(tenant, now=now)  # the tenant's next request
        q.append(nxt)
    return done


def test_fifo_is_oldest_first_across_tenants() -> None:
    q = FairQueue(fair=False)
    a1, b1, a2 = flight("a"), flight("b"), flight("a")
    for f in (a1, b1, a2):
        q.append(f)
    assert len(q) == 3 and list(q) == [a1, b1, a2]
    assert q.popleft() is a1
    q.appendleft(a1)
    q.remove(b1)
    assert [q.pop(NOW), q.pop(NOW), q.pop(NOW)] == [a1, a2, None]
    assert not q
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(ValueError):
        q.remove(b1)
    q.charge(a1, NOW)  # FIFO keeps no counters
    assert q.cost_of(a1) == 0.0 and q.report(NOW) is None


def test_ten_times_the_load_gets_half_the_completions() -> None:
    """A keeps 20 requests waiting, B 2: while both wait, B completes about half."""
    done = serve(FairQueue(), {"a": 20, "b": 2})
    share = done["b"] / (done["a"] + done["b"])
    assert 0.45 <= share <= 0.55, done
    fifo = serve(FairQueue(fair=False), {"a": 20, "b": 2})
    assert fifo["b"] / (fifo["a"] + fifo["b"]) < 0.15, fifo  # oldest first: ~1/11


def test_weights_share_in_proportion() -> None:
    q = FairQueue(classes=lambda t: (2.0 if t == "gold" else 1.0, 0))
    done = serve(q, {"gold": 10, "free": 10}, rounds=300)
    assert 0.62 <= done["gold"] / 300 <= 0.71, done  # 2/3


def test_a_higher_priority_class_goes_first_then_fair_within_it() -> None:
    q = FairQueue(classes=lambda t: (1.0, 1 if t.startswith("hi") else 0))
    for t in ("lo", "hi-a", "lo", "hi-b", "hi-a"):
        q.append(flight(t))
    order = []
    while q:
        f = q.pop(NOW)
        assert f is not None
        q.charge(f, NOW)
        order.append(f.ident[0])
    assert order == ["hi-a", "hi-b", "hi-a", "lo", "lo"]


def test_an_idle_tenant_banks_no_credit() -> None:
    """A ran alone for a long time; B arrives: B is lifted to A's counter less one
    request (it goes next), so they alternate instead of B taking every slot until it
    caught up."""
    q = FairQueue()
    for _ in range(50):
        f = flight("a")
        q.append(f)
        got = q.pop(NOW)
        assert got is f
        q.charge(f, NOW)
        q.settle(f, 10, 100)
    for _ in range(5):
        q.append(flight("a"))
    for _ in range(5):
        q.append(flight("b"))
    one = 10 * W_IN + 100 * W_OUT
    assert q.tenants["b"].counter == q.tenants["a"].counter - one  # lifted
    order = []
    for _ in range(6):
        f = q.pop(NOW)
        assert f is not None
        q.charge(f, NOW)
        order.append(f.ident[0])
    assert Counter(order) == {"a": 3, "b": 3}


def test_the_estimate_is_corrected_by_what_the_node_reported() -> None:
    q = FairQueue(classes=lambda t: (2.0, 0))
    f = flight("a", max_tokens=100)  # 30 bytes: 10 prompt tokens estimated
    q.append(f)
    assert q.pop(NOW) is f
    q.charge(f, NOW)
    q.charge(f, NOW)  # a retry's dispatch is not charged again
    estimate = 10 * W_IN + 100 * W_OUT
    assert q.cost_of(f) == estimate
    assert q.tenants["a"].counter == estimate / 2
    q.settle(f, 12, 5)
    assert q.tenants["a"].counter == (12 * W_IN + 5 * W_OUT) / 2
    q.settle(f, 12, 5)  # once
    assert q.tenants["a"].counter == (12 * W_IN + 5 * W_OUT) / 2
    report = q.report(NOW)
    assert report is not None
    assert report[0] == [("a", 12 * W_IN + 5 * W_OUT, (12 * W_IN + 5 * W_OUT) / 2)]


def test_another_gateways_charges_put_a_tenant_behind_here_too() -> None:
    g1, g2 = FairQueue(), FairQueue()
    for _ in range(4):  # a is served at gateway 1
        f = flight("a")
        g1.charge(f, NOW)
        g1.settle(f, 10, 100)
    report = g1.report(NOW)
    assert report is not None
    assert g1.report(NOW) is None  # nothing new since
    g2.append(flight("b"))
    g2.append(flight("b"))
    g2.apply("gw-1", *report, NOW)
    assert g2.tenants["a"].counter == g1.tenants["a"].counter == 4 * (10 * W_IN + 100 * W_OUT)
    g2.append(flight("a"))
    order = []
    while g2:
        f = g2.pop(NOW)
        assert f is not None
        g2.charge(f, NOW)
        order.append(f.ident[0])
    assert order == ["b", "b", "a"]  # a is behind at gateway 2 too


def test_a_lift_at_one_gateway_holds_at_the_others() -> None:
    g1, g2 = FairQueue(), FairQueue()
    g1.apply("gw-0", [("a", 5000.0, 5000.0)], [], NOW)
    g1.append(flight("a"))
    g1.append(flight("b"))  # lifted to a's 5000 less its own request at gateway 1
    lifted = 5000.0 - (10 * W_IN + 100 * W_OUT)
    report = g1.report(NOW)
    assert report is not None and ("b", 0.0, lifted) in report[0]
    g2.apply("gw-1", *report, NOW)
    assert g2.tenants["b"].counter == lifted


def test_held_back_while_a_tenant_behind_waits_at_another_gateway() -> None:
    q = FairQueue(hold_s=1.0, remote_ttl_s=10.0)
    q.apply("gw-0", [("a", 3000.0, 3000.0)], [], NOW)
    assert not q.held_back(flight("a"), NOW)  # nothing waits anywhere: no hold
    # b waits at gateway 2 for the same nodes, far behind a: a waits
    q.apply("gw-2", [("b", 0.0, 100.0)], [("b", "generate", "", 0.0)], NOW)
    assert q.held_back(flight("a"), NOW)
    a = flight("a")
    q.append(a)
    assert q.pop(NOW) is None and len(q) == 1
    assert q.held_back(flight("c"), NOW)  # c joins the queue here (a waits for generate)
    # ... not for another capability's nodes: c's embedding goes, a stays
    e = flight("c", capability="embed")
    assert not q.held_back(e, NOW)
    q.append(e)
    assert q.pop(NOW) is e and list(q) == [a]
    assert q.pop(NOW + 0.5) is None
    assert q.pop(NOW + 1.0) is a  # the hold lapses after hold_s


def test_a_hold_ends_with_the_other_gateways_list() -> None:
    q = FairQueue(remote_ttl_s=0.5)
    q.apply("gw-0", [("a", 3000.0, 3000.0)], [], NOW)
    a = flight("a")
    q.append(a)
    q.apply("gw-2", [("b", 0.0, 100.0)], [("b", "generate", "", 0.0)], NOW)
    assert q.pop(NOW) is None
    q.apply("gw-2", [], [], NOW + 0.1)  # b no longer waits there
    assert q.pop(NOW + 0.1) is a
    q.append(a)
    q.apply("gw-2", [("b", 0.0, 100.0)], [("b", "generate", "", 0.0)], NOW + 0.2)
    assert q.pop(NOW + 0.2) is None
    assert q.pop(NOW + 0.8) is a  # gw-2 silent for more than remote_ttl_s


def test_a_higher_class_waiting_elsewhere_holds_back_any_counter() -> None:
    q = FairQueue(classes=lambda t: (1.0, 5 if t == "vip" else 0))
    q.apply("gw-2", [("vip", 0.0, 1e9)], [("vip", "generate", "", 0.0)], NOW)
    q.append(flight("a"))
    assert q.pop(NOW) is None


def test_within_half_a_request_of_each_other_nobody_is_held() -> None:
    q = FairQueue()
    one = 10 * W_IN + 100 * W_OUT
    q.apply("gw-0", [("a", 0.0, 1000.0 + one * 0.45)], [], NOW)
    q.apply("gw-2", [("b", 0.0, 1000.0)], [("b", "generate", "", 0.0)], NOW)
    q.append(flight("a"))
    assert q.pop(NOW) is not None


def test_report_says_who_waits_and_once_more_when_nobody_does() -> None:
    q = FairQueue()
    f = flight("a")
    q.append(f)
    report = q.report(NOW)
    assert report is not None and report[1] == [("a", "generate", "", 0.0)]
    assert q.pop(NOW) is f
    report = q.report(NOW)
    assert report is not None and report[1] == []  # the others stop holding for a
    assert q.report(NOW) is None


def test_idle_tenants_are_forgotten_not_those_in_flight() -> None:
    q = FairQueue(forget_after_s=60.0)
    busy, idle = flight("busy"), flight("idle")
    q.charge(busy, NOW)
    q.charge(idle, NOW)
    q.settle(idle, 10, 10)
    q.tidy(NOW + 61)
    assert set(q.tenants) == {"busy"}
    q.settle(busy, 10, 10)
    q.tidy(NOW + 200)
    assert not q.tenants


def test_a_slot_seen_free_goes_to_the_gateway_whose_head_waited_longest() -> None:
    """a waits here and at gateway 2 (there longer): a slot another gateway freed
    (contended) is left to gateway 2; a slot freed here is used here."""
    q = FairQueue()
    f = flight("a")
    q.append(f)
    q.apply("gw-2", [("a", 0.0, 0.0)], [("a", "generate", "", 0.5)], NOW)
    assert q.pop(NOW, contended=True) is None
    assert q.pop(NOW, contended=False) is f
    q.append(f)
    q.apply("gw-2", [], [("a", "generate", "", 0.0)], NOW + 0.1)  # its head is younger
    assert q.pop(NOW + 0.1, contended=True) is f


def test_no_lift_for_a_tenant_waiting_at_another_gateway() -> None:
    """b waits at gateway 2 behind a: its deficit stands here too; c, idle, is lifted to
    the smallest counter waiting anywhere (b's), less one request."""
    q = FairQueue()
    q.apply("gw-0", [("a", 0.0, 5000.0), ("b", 0.0, 1000.0)], [], NOW)
    q.apply("gw-2", [], [("b", "generate", "", 0.1)], NOW)
    q.append(flight("a"))
    q.append(flight("b"))
    assert q.tenants["b"].counter == 1000.0
    q.append(flight("c"))
    assert q.tenants["c"].counter == 1000.0 - (10 * W_IN + 100 * W_OUT)


def test_a_hold_lapses_hold_s_after_it_began_not_after_the_flight_queued() -> None:
    q = FairQueue(hold_s=1.0, remote_ttl_s=60.0)
    q.apply("gw-0", [("a", 0.0, 3000.0)], [], NOW)
    a = flight("a", now=NOW - 5.0)  # queued long ago
    q.append(a)
    q.apply("gw-2", [("b", 0.0, 100.0)], [("b", "generate", "", 0.0)], NOW)
    assert q.pop(NOW) is None  # held from now on
    assert q.pop(NOW + 0.9) is None
    assert q.pop(NOW + 1.0) is a
