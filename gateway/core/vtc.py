"""Virtual token counters (VTC) for fair share: the cost of a request, one tenant's
state, the order of admission (pure; gateway/core/fairqueue.py uses them)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.flight import Flight
from gateway.limits import BYTES_PER_TOKEN_ESTIMATE, max_tokens
from shared.messages import InferRequest

W_IN = 1.0
"""Cost of a prompt token (VTC's reference implementation: input 1, output 2)."""
W_OUT = 2.0
"""Cost of a completion token: a decode step holds a slot about twice what a prefill
token costs in a batch (VTC's choice too); prompt-heavy work still counts."""

Classes = Callable[[str], tuple[float, int]]
"""tenant -> (weight, priority class)."""

Pool = tuple[str, str]
"""(capability, model or "") of a flight: the nodes it competes for."""

Charge = tuple[str, float, float]
"""(tenant, service since the last report, counter): what a gateway tells the others."""


def equal(_tenant: str) -> tuple[float, int]:
    """Every tenant weight 1, class 0."""
    return 1.0, 0


def pool_of(flight: Flight) -> Pool:
    """The nodes ``flight`` competes for."""
    return flight.capability, flight.request.model or ""


def estimate(request: InferRequest, default_max_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens a request is charged when dispatched: its prompt's
    UTF-8 bytes / 3 and its ``max_tokens`` (what the tenant limits reserve)."""
    prompt = -(-len(request.input.encode()) // BYTES_PER_TOKEN_ESTIMATE)
    return prompt, max_tokens(request) or default_max_tokens


def cost(prompt_tokens: float, completion_tokens: float) -> float:
    """The service of a request, in weighted tokens."""
    return prompt_tokens * W_IN + completion_tokens * W_OUT


@dataclass(slots=True, eq=False)
class TenantState:
    """One tenant's sub-queue and counter."""

    name: str
    weight: float
    priority: int
    counter: float = 0.0
    """Virtual tokens of service received (lifted when it becomes backlogged)."""
    queue: deque[Flight] = field(default_factory=deque)
    pools: dict[Pool, int] = field(default_factory=dict)
    """Flights waiting, by pool."""
    charged: int = 0
    """Flights charged and not settled yet (a tenant with some is never forgotten)."""
    seen: float = 0.0
    """When it last waited, was charged or heard of."""
    held_since: float | None = None
    """When its head was first held back for another gateway's tenant (None: not)."""


def order(tenant: TenantState) -> tuple[int, float, float]:
    """Admission order of waiting tenants: higher class, smaller counter, longer wait."""
    queued_at = tenant.queue[0].queued_at
    return -tenant.priority, tenant.counter, 0.0 if queued_at is None else queued_at
