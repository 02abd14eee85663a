"""What the other gateways said for fair share (pure): the slots their dispatches hold
on nodes (``RemoteHolds``) and the tenants waiting in their queues (``RemoteWaiting``).

A gateway counts its own dispatches to a node (``Fleet.hold``) and, with fair share,
tells the others how many it holds now, per node. Each keeps the latest figure of every
other gateway; a node's in-flight count here is then set to this gateway's own holds
plus their sum (``held``; gateway/shared_fair.py reconciles the nodes ``update`` and
``expire`` name), so that a node full with another gateway's work is full here too:
requests wait in the capacity queue, where fair share orders them, not in a race of
dispatches the node refuses. Setting the count (not adding changes) corrects itself
when a node was unknown or restarted. A gateway not heard for ``ttl_s`` holds nothing
(it died, or lost its figure and has held nothing new since).

A waiting list is a gateway's whole list (tenants by pool: capability, model, with how
long each tenant's head has waited there), believed for ``ttl_s``: the gateway publishes
it again while anything waits there. No I/O, no
clock: times are arguments.
"""

from __future__ import annotations

from collections.abc import Iterator


class RemoteHolds:
    """The latest holds of every other gateway."""

    __slots__ = ("_by_gateway", "ttl_s")

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._by_gateway: dict[str, tuple[float, dict[str, int]]] = {}

    def update(self, gateway_id: str, holds: dict[str, int], now: float) -> set[str]:
        """``gateway_id`` holds ``holds`` now: the nodes it held or holds (to reconcile
        each time: a node unknown before, or restarted, is counted right again)."""
        _, before = self._by_gateway.get(gateway_id, (0.0, {}))
        after = {n: k for n, k in holds.items() if k > 0}
        if after:
            self._by_gateway[gateway_id] = (now, after)
        else:
            self._by_gateway.pop(gateway_id, None)
        return before.keys() | after.keys()

    def expire(self, now: float) -> set[str]:
        """Gateways not heard for ``ttl_s`` hold nothing any more: the nodes concerned."""
        out: set[str] = set()
        for gateway_id, (heard, held) in list(self._by_gateway.items()):
            if now - heard > self.ttl_s:
                del self._by_gateway[gateway_id]
                out.update(held)
        return out

    def held(self, node_id: str) -> int:
        """Slots of ``node_id`` the other gateways hold."""
        return sum(held.get(node_id, 0) for _, held in self._by_gateway.values())


Waiting = tuple[str, str, str, float]
"""(tenant, capability, model, seconds its head has waited): one entry of a list."""

Waiter = tuple[str, float]
"""(tenant, when its head began to wait, on the receiver's clock)."""


class RemoteWaiting:
    """The tenants waiting at every other gateway, by pool."""

    __slots__ = ("_by_gateway", "ttl_s")

    def __init__(self, ttl_s: float = 0.5) -> None:
        self.ttl_s = ttl_s
        self._by_gateway: dict[str, tuple[float, dict[tuple[str, str], list[Waiter]]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_gateway)

    def update(self, gateway_id: str, waiting: list[Waiting], now: float) -> None:
        """``gateway_id``'s whole list now: ``(tenant, capability, model, waited_s)``."""
        if not waiting:
            self._by_gateway.pop(gateway_id, None)
            return
        pools: dict[tuple[str, str], list[Waiter]] = {}
        for name, capability, model, waited_s in waiting:
            pools.setdefault((capability, model), []).append((name, now - waited_s))
        self._by_gateway[gateway_id] = (now, pools)

    def tenants(self, pool: tuple[str, str], now: float) -> Iterator[Waiter]:
        """The tenants waiting elsewhere for ``pool``, each with when its head began to
        wait (on this clock; stale lists dropped)."""
        self.expire(now)
        for _, pools in self._by_gateway.values():
            yield from pools.get(pool, ())

    def everyone(self, now: float) -> set[str]:
        """Every tenant waiting elsewhere, for any pool."""
        self.expire(now)
        return {n for _, pools in self._by_gateway.values() for ws in pools.values() for n, _ in ws}

    def expire(self, now: float) -> None:
        """Drop the lists not renewed for ``ttl_s``."""
        for gateway_id, (heard, _) in list(self._by_gateway.items()):
            if now - heard > self.ttl_s:
                del self._by_gateway[gateway_id]
