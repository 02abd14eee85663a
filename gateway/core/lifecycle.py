"""What a request does next, after each event: pure decisions over a ``Flight``.

    event                           decision                 next step (core/steps.py)
    accepted                        -                        Route
    no node now (routing error)     after_routing_error      WaitBusy, Enqueue, Stay, Finish
    the attempt failed              after_failure            Retry, Failover, Finish
    the sweeper's tick              due                      a Timer (deadline, first
                                                             chunk, stall, ping)
    a node reported an error        read_node_error          a Verdict and a Failure
    the node finished               answered_tokens          (the tokens to report)

The engine (``gateway/engine.py``) runs the loop: it routes on ``Route`` (a
``Failover`` routes with its ``resume``), sends, and asks again after the next event.
The decisions keep the flight's own record (blame ledger, busy nodes, failovers, last
error) and never touch the network, the fleet or a clock: times and the fleet's answers
are arguments. Blame and the busy wait are ``gateway/outcome.py`` (docs/routing.md,
"Blame" and "One retry budget").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from gateway.core.cooldown import Cooldowns, busy_seconds
from gateway.core.flight import ATTEMPT, DONE, QUEUED, Flight
from gateway.core.steps import (
    DEADLINE,
    ENQUEUE,
    FIRST_CHUNK,
    NO_TIMER,
    PING,
    STALL,
    STAY,
    Failover,
    Failure,
    Finish,
    Retry,
    Step,
    Timer,
    WaitBusy,
)
from gateway.outcome import Blame, Verdict, busy_wait, judge_node_error, retry_after
from gateway.retry import RetryPolicy
from shared import errors
from shared import headers as h
from shared import messages as m
from shared.config import GatewayConfig

RESUMABLE = frozenset({"generate", "code"})
"""Capabilities whose streams can continue on another node (text continuation)."""

BUSY_BACKOFF_S = 0.1
"""First wait for busy nodes (doubling per busy answer, at most ``retry_backoff_max_s``)."""

QUEUE_FULL_RETRY_AFTER_S = 1.0
"""``Retry-After`` of a ``429`` answered because the capacity queue is full."""

NOT_ON_THE_WIRE = frozenset(
    {"node_draining", "node_unreachable", "node_unavailable", "circuit_open", "unavailable"}
)
"""Error kinds of nodes or the core that the contract does not define for services."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers the lifecycle obeys (from ``GatewayConfig``)."""

    max_retries: int = 3
    first_chunk_timeout_s: float = 10.0
    stall_timeout_s: float = 2.0
    liveness_probe_s: float = 0.25
    max_queue: int = 1000
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 0.5
    busy_backoff_s: float = BUSY_BACKOFF_S
    resumable: frozenset[str] = RESUMABLE

    @classmethod
    def of(cls, cfg: GatewayConfig) -> Limits:
        """The limits of a gateway config."""
        return cls(
            max_retries=cfg.max_retries,
            first_chunk_timeout_s=cfg.first_chunk_timeout_s,
            stall_timeout_s=cfg.stall_timeout_s,
            liveness_probe_s=cfg.liveness_probe_s,
            max_queue=cfg.max_queue,
            backoff_initial_s=cfg.retry_backoff_initial_s,
            backoff_max_s=cfg.retry_backoff_max_s,
        )


class Lifecycle:
    """The decisions, under one gateway's limits and retry policy."""

    def __init__(self, limits: Limits | None = None, retry: RetryPolicy | None = None) -> None:
        self.limits = lim = limits or Limits()
        self.retry = retry or RetryPolicy(lim.max_retries, lim.backoff_initial_s, lim.backoff_max_s)

    def after_failure(
        self, flight: Flight, failure: Failure, now: float, cooldowns: Cooldowns, fair: bool
    ) -> Step:
        """The attempt failed (its node already released): retry, fail over, or finish.

        ``fair`` False (the gateway's link was down meanwhile) keeps the node out of the
        blame ledger. Every dispatch, busy answers included, spends the one retry budget.
        """
        node_id = flight.node_id
        error = failure.error
        flight.last_error = (failure.code or error.code, failure.kind or error.kind, error.message)
        if node_id is not None and flight.blame.record(node_id, failure.blame, counted=fair):
            # Failed the same way on several nodes: the request, not the fleet.
            return Finish(final_error(flight, error, now))
        remaining = flight.deadline - now
        lim = self.limits
        if flight.seq:
            if flight.capability not in lim.resumable:
                why = f"{flight.capability} streams cannot resume: {error.message}"
                return Finish(errors.Interrupted(why))
            if remaining <= 0:
                return Finish(errors.Timeout(detail=error.message))
            if flight.attempts > lim.max_retries:
                return Finish(errors.Interrupted(error.message))
            if flight.gapped:
                why = f"chunks of a direct stream missed the gateway: {error.message}"
                return Finish(errors.Interrupted(why))
            text, tokens, tools = flight.relayed()
            if tools:
                why = f"a stream that relayed tool calls cannot resume: {error.message}"
                return Finish(errors.Interrupted(why))
            flight.failovers += 1
            return Failover(m.Resume(text=text, tokens=tokens))
        if failure.kind == "overloaded" and node_id is not None:
            # The node is full with other work: not its fault. Try the others first; if
            # none can take it, wait for the busy ones (after_routing_error).
            flight.busy += 1
            flight.busy_nodes.append(node_id)
        delay = self.retry.next_delay(flight.attempts, remaining)
        if delay is None:
            final = final_error(flight, error, now)
            if isinstance(final, errors.Overloaded) and node_id in cooldowns:
                final.retry_after_s = retry_after(now, cooldowns.until(node_id or ""))
            return Finish(final)
        return Retry(delay)

    def after_routing_error(
        self,
        flight: Flight,
        error: errors.FedError,
        now: float,
        cooldowns: Cooldowns,
        serving: Callable[[], Iterable[str]],
        queue_len: int,
        resuming: bool,
    ) -> Step:
        """No node can take the next attempt now: wait for busy nodes or capacity, or
        finish. ``serving()`` lists the nodes serving the request's capability and model."""
        lim = self.limits
        if cooldowns and not flight.busy_nodes and not flight.seq:
            # Nodes inside a Retry-After were left out: they are busy, not gone.
            flight.busy_nodes = [
                n for n in cooldowns.cooling(serving(), now) if n not in flight.tried
            ]
            flight.tried.extend(flight.busy_nodes)
        if flight.busy_nodes and not flight.seq:
            # Every node left refused for lack of capacity: wait for the first one's
            # Retry-After, within the retry budget and the deadline, or answer 429 now.
            ready_at = min(cooldowns.until(n, now) for n in flight.busy_nodes)
            wait = busy_wait(
                now, flight.deadline, flight.attempts, lim.max_retries, flight.busy,
                ready_at, lim.busy_backoff_s, lim.backoff_max_s,
            )  # fmt: skip
            if wait is not None:
                for node_id in flight.busy_nodes:
                    flight.tried.remove(node_id)
                flight.busy_nodes.clear()
                return WaitBusy(wait)
            spent = flight.attempts > lim.max_retries
            return Finish(
                errors.Overloaded(
                    f"every eligible node for {flight.capability} is busy"
                    + (" and the retry budget is spent" if spent
                       else "; the wait would pass the request's deadline"),
                    retry_after_s=retry_after(now, ready_at),
                )
            )  # fmt: skip
        if isinstance(error, errors.Overloaded):
            if flight.phase is QUEUED:
                return STAY  # tried again when capacity frees
            if queue_len < lim.max_queue and not resuming:
                return ENQUEUE
            if error.retry_after_s is None:  # the queue is full: a hint for backing off
                error.retry_after_s = QUEUE_FULL_RETRY_AFTER_S
            return Finish(error)
        if isinstance(error, errors.NoCapacity):
            model = flight.request.model
            if any(True for _ in serving()):
                # The core keeps the reference's split (skipped nodes count as none); on
                # the wire, nodes that exist but are unhealthy or circuit-open are a 503.
                error = errors.AllNodesUnhealthy(
                    flight.capability,
                    f"All nodes unhealthy for capability: {flight.capability} "
                    "(every node serving it is unhealthy, circuit-open or already tried)",
                )
            elif model:
                error = errors.NoCapacity(
                    flight.capability,
                    f"No nodes available for capability: {flight.capability} with model {model!r}",
                )
        return Finish(final_error(flight, error, now))

    def due(self, flight: Flight, now: float) -> Timer:
        """The timer that fires for ``flight`` at ``now``, if any."""
        if flight.phase is DONE:
            return NO_TIMER
        if now >= flight.deadline:
            return DEADLINE
        attempt = flight.current
        if flight.phase is not ATTEMPT or attempt is None:
            return NO_TIMER
        lim = self.limits
        if attempt.first_chunk_at is None:
            if now - attempt.started >= lim.first_chunk_timeout_s:
                return FIRST_CHUNK
        elif now - attempt.last_activity >= lim.stall_timeout_s:
            return STALL
        if not attempt.pinged and now - attempt.last_activity >= lim.liveness_probe_s:
            return PING
        return NO_TIMER

    def timeout_failure(self, flight: Flight, timer: Timer) -> Failure:
        """The failure of an attempt whose first-chunk or stall timer fired."""
        lim = self.limits
        if timer is FIRST_CHUNK:
            detail = f"no answer from {flight.node_id} within {lim.first_chunk_timeout_s:g}s"
        else:
            detail = f"{flight.node_id} stalled for {lim.stall_timeout_s:g}s"
        return Failure(errors.Timeout(detail=detail), Blame.NOW)


def refusal(request: m.InferRequest) -> errors.FedError | None:
    """Why a decoded request (its capability set) is refused before it is accepted."""
    if request.stream and request.capability == "embed":
        return errors.BadRequest('embeddings do not stream: send "stream": false')
    return None


def final_error(flight: Flight, routing_error: errors.FedError, now: float) -> errors.FedError:
    """The error to answer when no further node can be tried."""
    if flight.attempts == 0 or flight.last_error is None:
        return routing_error
    code, kind, text = flight.last_error
    if kind == "timeout" or now >= flight.deadline:
        return errors.Timeout(detail=text)
    if flight.seq:
        return errors.Interrupted(f"stream lost its node after {flight.seq} chunks: {text}")
    if kind == "overloaded":
        return errors.Overloaded(text)
    if kind in NOT_ON_THE_WIRE:
        return errors.AllNodesUnhealthy(flight.capability, text)
    err = errors.from_headers({h.FED_ERROR: kind, h.ERROR_CODE: str(code), h.ERROR: text})
    return err or errors.Internal(text)


def read_node_error(hdrs: dict[str, str], remaining_s: float) -> tuple[Verdict, Failure, float]:
    """A node's error reply: the verdict (docs/routing.md, "Blame"), the failure to
    record, and how long to leave the node alone when it is busy (its Retry-After)."""
    kind = hdrs.get(h.FED_ERROR, "internal")
    code_text = hdrs.get(h.ERROR_CODE, "500")
    code = int(code_text) if code_text.isdigit() else 500
    text = hdrs.get(h.ERROR, kind)
    verdict = judge_node_error(kind, code, remaining_s)
    err = errors.from_headers(hdrs) or errors.Internal(text)
    busy_s = busy_seconds(hdrs.get(h.RETRY_AFTER, "")) if verdict.busy else 0.0
    return verdict, Failure(err, verdict.blame, code, kind, node_reported=True), busy_s


class _Tokens(msgspec.Struct):
    tokens: int = 0


_tokens_decoder = msgspec.json.Decoder(_Tokens)


def answered_tokens(flight: Flight, node_headers: dict[str, str], data: bytes) -> int:
    """The tokens to report for a successful answer."""
    if flight.request.stream and flight.failovers:
        # After a failover the caller's total is what it received, whatever the last
        # node counted (it may or may not include ``resume.tokens``).
        return flight.relayed()[1]
    text = node_headers.get(h.TOKENS, "")
    if text.isdigit():
        return int(text)
    if data:  # a node that does not send Fed-Tokens: read the result
        try:
            return _tokens_decoder.decode(data).tokens
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return 0
    return 0
