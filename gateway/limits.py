"""Tenant limits as local allotments: the pure accounting (no I/O, no clock of its own).

Every limit of ``shared.config.TenantLimits`` is a *pool* per (tenant, limit): a number
of units this gateway has leased from the fleet-wide allowance (gateway/quota.py leases
them from a JetStream key-value bucket) and may hand out without asking anyone:

==================  ==============  ===============================================
limit               unit            window
==================  ==============  ===============================================
``concurrent``      a request slot  none: slots are held while in use, then returned
``rpm``             a request       fixed 60 s windows from the Unix epoch
``tpm``             a token         fixed 60 s windows
``budget``          a token         fixed ``budget_period_s`` windows
==================  ==============  ===============================================

A request *reserves* its tokens when admitted (a prompt estimate plus its
``max_tokens``, or ``default_max_tokens``) and *settles* when it ends with what the node
reported: the unused part returns to the pool. Since a pool never hands out more than
it leased, and the bucket never leases more than the limit, the fleet-wide total of
reservations never exceeds the limit: the overshoot is bounded by what nodes produce
beyond a reservation (a prompt estimated short), not by the number of gateways. This is
the leased-allotment scheme of token-bucket rate limiters with local caches (e.g.
Envoy's and Stripe's, which refill a local quota from a shared store in the background).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec

from shared.config import TenantLimits
from shared.headers import PROMPT_TOKENS
from shared.messages import InferRequest

MINUTE_S = 60.0
CONCURRENT, RPM, TPM, BUDGET = "concurrent", "rpm", "tpm", "budget"
BYTES_PER_TOKEN_ESTIMATE = 3
"""A prompt's tokens estimated from its UTF-8 bytes, on the high side (English BPE
tokenizers average about 4 bytes per token), so that reservations rarely fall short."""


@dataclass(slots=True)
class Pool:
    """One tenant's allotment of one limit at this gateway."""

    tenant: str
    kind: str
    limit: int
    period_s: float
    """The window's length (0: no window, for ``concurrent``)."""
    window: int = -1
    """The window the balance belongs to (``floor(now / period_s)``)."""
    balance: int = 0
    """Units leased to this gateway and not handed out (counters), or slots held."""
    in_use: int = 0
    """``concurrent`` only: slots taken by requests in flight here."""
    refused: int = 0
    """Requests refused for this pool (a figure)."""
    refused_seen: int = 0
    """``refused`` at the last tidy (a refusal since: give the whole balance back)."""
    used: int = 0
    """Units spent in the current window here (a figure)."""
    outstanding: int = 0
    """Tokens reserved by requests still in flight here (``tpm``/``budget``)."""
    unflushed: int = 0
    """Units spent here and not yet added to the shared ``.spent`` figure."""

    def key(self) -> str:
        """The pool's key in the shared bucket (the window is part of a counter's key)."""
        if self.kind == CONCURRENT:
            return f"{CONCURRENT}.{self.tenant}"
        return f"{self.kind}.{self.tenant}.{self.window}"

    def roll(self, now: float) -> None:
        """Move to the window of ``now`` (a new window starts with nothing leased)."""
        if self.period_s:
            window = int(now // self.period_s)
            if window != self.window:
                self.window, self.balance, self.used, self.outstanding = window, 0, 0, 0
                self.unflushed = 0

    def free(self) -> int:
        """Units that can be handed out now."""
        return self.balance - self.in_use if self.kind == CONCURRENT else self.balance

    def lease_size(self, need: int) -> int:
        """How much to lease when ``need`` more units are wanted: a sixteenth of the limit
        (few round trips, little stranded at a gateway that dies), at least ``need``."""
        return min(self.limit, max(need, self.limit // 16, 1))

    def retry_after(self, now: float, spent: int | None = None, need: int = 1) -> float:
        """Seconds until this pool may have room: 1 s for slots, while requests here still
        hold reservations, or while the fleet has ``spent`` less than the limit (leases
        come back); else the window's end."""
        if not self.period_s or self.outstanding > 0:
            return 1.0
        if spent is not None and spent + need <= self.limit:
            return 1.0
        return max(0.0, (self.window + 1) * self.period_s - now)


@dataclass(slots=True)
class Ticket:
    """What an admitted request holds until it ends."""

    tenant: str
    reserved: int
    """Tokens reserved (prompt estimate + completion tokens allowed)."""
    pools: list[tuple[Pool, int]] = field(default_factory=list)
    """Each pool charged, with the window it was charged in."""


def pools_for(tenant: str, limits: TenantLimits) -> list[Pool]:
    """The pools of one tenant's limits (only the limits that are set)."""
    out = []
    if limits.max_concurrent is not None:
        out.append(Pool(tenant, CONCURRENT, limits.max_concurrent, 0.0))
    if limits.requests_per_minute is not None:
        out.append(Pool(tenant, RPM, limits.requests_per_minute, MINUTE_S))
    if limits.tokens_per_minute is not None:
        out.append(Pool(tenant, TPM, limits.tokens_per_minute, MINUTE_S))
    if limits.token_budget is not None:
        out.append(Pool(tenant, BUDGET, limits.token_budget, limits.budget_period_s))
    return out


def reservation(prompt_bytes: int, max_tokens: int) -> int:
    """Tokens a request reserves: its prompt estimated from its bytes, plus its budget."""
    return math.ceil(prompt_bytes / BYTES_PER_TOKEN_ESTIMATE) + max(0, max_tokens)


def max_tokens(request: InferRequest) -> int | None:
    """The completion tokens a request allows (``params.max_tokens`` or
    ``max_completion_tokens``), None when it sets none (or not as a positive integer)."""
    params = request.params
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _Prompt(msgspec.Struct):
    prompt_tokens: int | None = None


_prompt_decoder = msgspec.json.Decoder(_Prompt)


def prompt_tokens(node_headers: dict[str, str], data: bytes) -> int:
    """Prompt tokens as the node reported them: ``Fed-Prompt-Tokens`` (streams), else a
    result body's ``prompt_tokens``; 0 when unknown."""
    text = node_headers.get(PROMPT_TOKENS, "")
    if text.isdigit():
        return int(text)
    if data:
        try:
            return _prompt_decoder.decode(data).prompt_tokens or 0
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return 0
    return 0


def units(pool: Pool, tokens: int) -> int:
    """What one request takes from ``pool``: one slot or request, or its tokens."""
    return tokens if pool.kind in (TPM, BUDGET) else 1


def shortfall(pools: list[Pool], tokens: int, now: float) -> list[tuple[Pool, int]]:
    """The pools that cannot cover the request now, each with the units missing."""
    short = []
    for pool in pools:
        pool.roll(now)
        need = units(pool, tokens) - pool.free()
        if need > 0:
            short.append((pool, need))
    return short


def charge(tenant: str, pools: list[Pool], tokens: int) -> Ticket:
    """Hand out what the request takes from every pool (they cover it: see shortfall)."""
    ticket = Ticket(tenant, tokens)
    for pool in pools:
        n = units(pool, tokens)
        if pool.kind == CONCURRENT:
            pool.in_use += 1
        else:
            pool.balance -= n
            pool.used += n
            if pool.kind != RPM:
                pool.outstanding += n
            else:
                pool.unflushed += 1
        ticket.pools.append((pool, pool.window))
    return ticket


def settle(ticket: Ticket, used_tokens: int) -> None:
    """The request ended having used ``used_tokens``: give back what it reserved beyond
    that (in the window it was charged in; a later window owes nothing), free its slot.
    Tokens beyond the reservation are taken from the balance, which may go negative (the
    next request then needs a lease)."""
    extra = ticket.reserved - used_tokens
    for pool, window in ticket.pools:
        if pool.kind == CONCURRENT:
            pool.in_use = max(0, pool.in_use - 1)
        elif pool.kind in (TPM, BUDGET) and window == pool.window:
            pool.balance += extra
            pool.used -= extra
            pool.outstanding -= ticket.reserved
            pool.unflushed += used_tokens
