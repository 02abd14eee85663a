"""The live figures of a gateway service (``GatewayService`` mixes them in): requests in
flight and queued, retries and failovers, the ``GatewayLoad`` read model, and the intake
callback and tables as tests and benchmarks reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway.core.flight import Flight
from shared import messages as m

if TYPE_CHECKING:
    from gateway.engine import Engine
    from gateway.handlers import Intake
    from gateway.recorder import Recorder


class Figures:
    """What a service reports about itself (a mixin: it reads the service's parts)."""

    engine: Engine
    intake: Intake
    recorder: Recorder

    # -- figures ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self.engine.flights)

    @property
    def queued(self) -> int:
        """Requests waiting for capacity."""
        return len(self.engine.waiting)

    @property
    def retries(self) -> int:
        """Dispatches retried on another node (before the first chunk)."""
        return self.recorder.retries

    @property
    def failovers(self) -> int:
        """Streams continued on another node after chunks were relayed."""
        return self.recorder.failovers

    def load(self) -> m.GatewayLoad:
        """The live figures, as a read model."""
        rec = self.recorder
        return m.GatewayLoad(
            in_flight=self.in_flight, queued=self.queued, retries=rec.retries,
            failovers=rec.failovers,
        )  # fmt: skip

    # -- the intake callback and tables, as tests and benchmarks reach them ----------------

    @property
    def _on_request(self) -> Callable[[Any], Coroutine[Any, Any, None]]:
        return self.intake.on_request

    @property
    def _flights(self) -> dict[str, Flight]:
        return self.engine.flights

    @property
    def _inbox(self) -> str:
        return self.engine.inbox
