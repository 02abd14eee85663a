"""The capacity queue: one FIFO per tenant, admitted by fair share (pure).

Virtual Token Counter (VTC; Sheng et al., "Fairness in Serving Large Language Models",
OSDI 2024), within each priority class (docs/tenants.md, "Fair share"):

- a tenant's counter is the service it received, in virtual tokens: (prompt tokens x
  ``W_IN`` + completion tokens x ``W_OUT``) / its weight;
- the next flight admitted is the head of the backlogged tenant with the smallest
  counter, in the highest priority class that has one (strict priority between
  classes; a tie goes to the head that waited longer);
- a tenant that becomes backlogged (nothing of it waits here or elsewhere) is lifted to
  at least the smallest counter waiting in its class in the fleet, less its request's
  cost (none waiting: the counter of the last one to leave the queue), so an idle
  tenant banks no credit beyond going next;
- a flight is charged an estimate when it is dispatched (its prompt bytes / 3 + its
  ``max_tokens``, what the tenant limits reserve: gateway/limits.py) and corrected
  with what the node reported when it ends (``settle``);
- other gateways' charges are added and their counters merged (``apply``), and a
  flight is held back while a tenant of its pool (capability, model) with a smaller
  counter (by half a request) waits at another gateway (``pop``; at most ``hold_s``),
  so that the fleet, not each gateway alone, shares out the nodes.

With ``fair=False`` every flight is in one FIFO: the capacity queue as it was, oldest
first. Bounded memory: a tenant idle for ``forget_after_s`` is forgotten (``tidy``;
the lift makes that harmless). No I/O, no clock: times are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from gateway.core.fairshare_sync import FleetExchange
from gateway.core.flight import Flight
from gateway.core.remote import RemoteWaiting
from gateway.core.vtc import (
    Classes,
    Pool,
    TenantState,
    cost,
    equal,
    estimate,
    order,
    pool_of,
)


class FairQueue(FleetExchange):
    """The capacity queue of one gateway (``fair=False``: oldest first)."""

    def __init__(
        self,
        fair: bool = True,
        classes: Classes = equal,
        *,
        default_max_tokens: int = 1024,
        hold_s: float = 1.0,
        remote_ttl_s: float = 0.5,
        forget_after_s: float = 600.0,
    ) -> None:
        self.fair = fair
        self.classes = classes
        self.default_max_tokens = default_max_tokens
        self.hold_s = hold_s
        """Longest a flight is held back for tenants waiting at other gateways."""
        self.forget_after_s = forget_after_s
        self.tenants: dict[str, TenantState] = {}
        self._backlogged: dict[str, TenantState] = {}
        self._pools: dict[Pool, int] = {}
        self._len = 0
        self._floor: dict[int, float] = {}
        """Class -> counter of the last tenant to leave the queue (the lift when empty)."""
        self._charged: dict[str, tuple[float, float]] = {}
        """Flight key -> (the service it was charged: an estimate, its prompt estimate),
        until settled."""
        self._service: dict[str, float] = {}
        """Tenant -> service charged here since the last ``report``."""
        self._announced = False
        self._remote = RemoteWaiting(remote_ttl_s)
        """The tenants waiting at the other gateways."""
        self.now = 0.0
        """The latest time any call was given."""
        self.on_yield: Callable[[], None] | None = None
        """Called when a slot freed here is left for another gateway's tenant (fair share
        tells the others at once)."""

    # -- the deque's operations (what the engine and the table use) ------------------------

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Flight]:
        for tenant in list(self._backlogged.values()):
            yield from tenant.queue

    def append(self, flight: Flight) -> None:
        """``flight`` waits behind its tenant's others (its tenant lifted if it was idle)."""
        tenant = self._tenant(self._key(flight))
        now = tenant.seen = flight.queued_at or self.now
        if not tenant.queue:
            self._lift(tenant, flight, now)
            self._backlogged[tenant.name] = tenant
        tenant.queue.append(flight)
        self._counted(tenant, flight, 1)

    def appendleft(self, flight: Flight) -> None:
        """``flight`` back at the head of its tenant's queue (the undo of a pop)."""
        tenant = self._tenant(self._key(flight))
        if not tenant.queue:
            self._backlogged[tenant.name] = tenant
        tenant.queue.appendleft(flight)
        self._counted(tenant, flight, 1)

    def popleft(self) -> Flight:
        """The next flight by fair share (``IndexError`` when empty), never held back."""
        if not self._len:
            raise IndexError("pop from an empty queue")
        return self._take(self._best())

    def pop(self, now: float, contended: bool = True) -> Flight | None:
        """The next flight by fair share, or None: empty, or held back for a tenant waiting
        at another gateway for the same nodes (it stays, at its head). ``contended``
        False: the slot to fill was freed here (not seen free in another's figures)."""
        self.now = now
        if not self._len:
            return None
        tenant = self._best()
        if not self._remote or not self._held(tenant, tenant.queue[0], now, contended):
            return self._take(tenant)
        for other in sorted(self._backlogged.values(), key=order):  # another pool's may go
            if other is not tenant and not self._held(other, other.queue[0], now, contended):
                return self._take(other)
        if not contended and self.on_yield is not None:
            self.on_yield()
        return None

    def remove(self, flight: Flight) -> None:
        """Take ``flight`` out (``ValueError`` when it is not queued)."""
        tenant = self.tenants.get(self._key(flight))
        if tenant is None:
            raise ValueError("not queued")
        tenant.queue.remove(flight)
        tenant.held_since = None
        self._counted(tenant, flight, -1)
        if not tenant.queue:
            self._leave(tenant)

    # -- fair share --------------------------------------------------------------------------

    def held_back(self, flight: Flight, now: float) -> bool:
        """Whether ``flight`` (not queued) should wait: a flight of its pool waits here, or
        a tenant behind its own waits at another gateway."""
        if not self.fair or not (self._pools or self._remote):
            return False  # nothing waits anywhere (the common case: one check)
        self.now = now
        if self._pools.get(pool_of(flight)):
            return True
        tenant = self._tenant(flight.ident[0])
        return bool(self._remote) and self._held(tenant, flight, now, contended=True)

    def charge(self, flight: Flight, now: float) -> None:
        """``flight`` was dispatched: charge its tenant an estimate (once per flight)."""
        if not self.fair or flight.key in self._charged:
            return
        self.now = now
        tenant = self._tenant(flight.ident[0])
        prompt, completion = estimate(flight.request, self.default_max_tokens)
        charge = cost(prompt, completion)
        self._charged[flight.key] = charge, prompt
        tenant.charged += 1
        self._add(tenant, charge, now)

    def settle(self, flight: Flight, prompt_tokens: int, completion_tokens: int) -> None:
        """``flight`` ended: replace its estimate with what it used (``prompt_tokens`` 0:
        not reported, the estimate stands)."""
        entry = self._charged.pop(flight.key, None)
        if entry is None:
            return
        charged, prompt = entry
        tenant = self._tenant(flight.ident[0])
        tenant.charged -= 1
        self._add(tenant, cost(prompt_tokens or prompt, completion_tokens) - charged, self.now)

    def cost_of(self, flight: Flight) -> float:
        """What ``flight`` is charged while it runs (0: not charged)."""
        entry = self._charged.get(flight.key)
        return 0.0 if entry is None else entry[0]

    # -- inside ------------------------------------------------------------------------------

    def _key(self, flight: Flight) -> str:
        return flight.ident[0] if self.fair else ""

    def _tenant(self, name: str) -> TenantState:
        tenant = self.tenants.get(name)
        if tenant is None:
            weight, priority = self.classes(name) if self.fair else (1.0, 0)
            tenant = self.tenants[name] = TenantState(name, weight, priority, seen=self.now)
        return tenant

    def _counted(self, tenant: TenantState, flight: Flight, delta: int) -> None:
        self._len += delta
        if self.fair:
            pool = pool_of(flight)
            for counts in (self._pools, tenant.pools):
                left = counts.get(pool, 0) + delta
                if left:
                    counts[pool] = left
                else:
                    counts.pop(pool, None)

    def _add(self, tenant: TenantState, service: float, now: float) -> None:
        tenant.counter += service / tenant.weight
        tenant.seen = now
        self._service[tenant.name] = self._service.get(tenant.name, 0.0) + service

    def _lift(self, tenant: TenantState, flight: Flight, now: float) -> None:
        """At least the smallest counter of its class waiting in the fleet less the cost
        of ``flight`` (it goes next, not behind older heads: no more credit than that),
        unless it waits at another gateway itself (then its deficit stands)."""
        if not self.fair:
            return
        elsewhere = self._remote.everyone(now)
        if tenant.name in elsewhere:
            return
        waiting = [*self._backlogged.values(), *filter(None, map(self.tenants.get, elsewhere))]
        others = [t.counter for t in waiting if t.priority == tenant.priority]
        floor = min(others) if others else self._floor.get(tenant.priority)
        if floor is not None:
            floor -= cost(*estimate(flight.request, self.default_max_tokens)) / tenant.weight
            if floor > tenant.counter:
                tenant.counter = floor

    def _leave(self, tenant: TenantState) -> None:
        del self._backlogged[tenant.name]
        self._floor[tenant.priority] = tenant.counter

    def _best(self) -> TenantState:
        return min(self._backlogged.values(), key=order)

    def _take(self, tenant: TenantState) -> Flight:
        flight = tenant.queue.popleft()
        tenant.held_since = None
        self._counted(tenant, flight, -1)
        if not tenant.queue:
            self._leave(tenant)
        return flight

    def _held(self, tenant: TenantState, head: Flight, now: float, contended: bool) -> bool:
        """A tenant of ``head``'s pool waits at another gateway in a higher class, or in
        the same class more than half of ``head``'s cost behind ``tenant`` (half: a tie,
        or a batch in transit, holds nobody; one request ahead does). For a ``contended``
        slot (seen free in the others' figures, as they all see it), also ``tenant``
        itself waiting longer there: one gateway takes it. (Two tenants level with each
        other may both try: a tie-break between them could hold both, each for the other,
        when their weights differ.)"""
        queued = tenant.queue and tenant.queue[0] is head
        if queued and tenant.held_since is not None and now - tenant.held_since >= self.hold_s:
            return False  # held long enough: the others' lists may be wrong
        since = now if head.queued_at is None else head.queued_at
        pool = pool_of(head)
        slack = cost(*estimate(head.request, self.default_max_tokens)) / tenant.weight / 2
        for name, other_since in self._remote.tenants(pool, now):
            other = self.tenants.get(name)
            if other is None or other.priority < tenant.priority:
                continue
            if (
                other.priority > tenant.priority
                or other.counter + slack < tenant.counter
                or (contended and other is tenant and other_since < since)
            ):
                if queued and tenant.held_since is None:
                    tenant.held_since = now
                return True
        return False
