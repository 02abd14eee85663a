"""The fair queue's exchange with the other gateways (``FairQueue`` mixes it in, pure):
what to report on ``fed.fair`` (the service charged here per tenant since the last
report, and the tenants waiting here), how another gateway's report is applied (its
charges added, counters merged: the larger wins), and forgetting idle tenants and
stale lists. No I/O: ``gateway/shared_fair.py`` publishes and receives the batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.remote import RemoteWaiting, Waiting
from gateway.core.vtc import Charge, TenantState


class FleetExchange:
    """The report/apply half of ``gateway.core.fairqueue.FairQueue``."""

    fair: bool
    now: float
    forget_after_s: float
    tenants: dict[str, TenantState]
    _backlogged: dict[str, TenantState]
    _service: dict[str, float]
    _announced: bool
    _remote: RemoteWaiting

    if TYPE_CHECKING:

        def _tenant(self, name: str) -> TenantState:
            """The queue's: a tenant's state, created on first sight."""

    # -- the other gateways ------------------------------------------------------------------

    def report(self, now: float) -> tuple[list[Charge], list[Waiting]] | None:
        """What to tell the other gateways now: each tenant charged since the last report
        (service, counter) and every tenant waiting here (tenant, capability, model, how
        long its head has waited); None when there is nothing new and nothing waits."""
        if not self.fair:
            return None
        self.now = now
        waiting = [
            (t.name, *pool, max(0.0, now - (t.queue[0].queued_at or now)))
            for t in self._backlogged.values()
            for pool in t.pools
        ]
        if not self._service and not waiting and not self._announced:
            return None
        names = set(self._service) | {w[0] for w in waiting}
        charges = [(n, self._service.get(n, 0.0), self._tenant(n).counter) for n in sorted(names)]
        self._service = {}
        self._announced = bool(waiting)
        return charges, waiting

    def apply(
        self, gateway_id: str, charges: list[Charge], waiting: list[Waiting], now: float,
    ) -> None:  # fmt: skip
        """Another gateway's report: its charges added, its counters merged (the larger
        wins: a lift there holds here), its waiting tenants noted."""
        if not self.fair:
            return
        self.now = now
        for name, service, counter in charges:
            tenant = self._tenant(name)
            tenant.counter = max(tenant.counter + service / tenant.weight, counter)
            tenant.seen = now
        self._remote.update(gateway_id, waiting, now)

    def tidy(self, now: float) -> None:
        """Forget idle tenants and other gateways' stale lists."""
        self.now = now
        self._remote.expire(now)
        idle = now - self.forget_after_s
        for name, tenant in list(self.tenants.items()):
            if not tenant.queue and not tenant.charged and tenant.seen < idle:
                del self.tenants[name]

    @property
    def announced(self) -> bool:
        """The last report said something waits here (the next one says if it still does)."""
        return self._announced

    @property
    def unreported(self) -> bool:
        """Service was charged here since the last report."""
        return bool(self._service)

    def waiting(self) -> dict[str, int]:
        """Flights waiting here, by tenant."""
        return {name: len(t.queue) for name, t in self._backlogged.items()}
