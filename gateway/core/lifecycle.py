"""What a request does next, after each event: pure decisions over a ``Flight``.

    event                           decision                 next step (core/steps.py)
    accepted                        -                        Route
    no node now (routing error)     after_routing_error      WaitBusy, Enqueue, Stay, Finish
    the attempt failed              after_failure            Retry, Failover, Finish
    the sweeper's tick              due                      a Timer (deadline, first
                                                             chunk, stall, ping)
    a node reported an error        read_node_error          a Verdict and a Failure
    the node finished               answered_tokens          (the tokens to report)

(``read_node_error``, ``answered_tokens``, ``final_error`` and ``refusal`` are
``gateway/core/verdicts.py``.)

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

from gateway.core.cooldown import Cooldowns
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
from gateway.core.verdicts import final_error
from gateway.outcome import Blame, busy_wait, retry_after
from gateway.retry import RetryPolicy
from shared import errors
from shared import messages as m
from shared.config import GatewayConfig

RESUMABLE = frozenset({"generate", "code"})
"""Capabilities whose streams can continue on another node (text continuation)."""

BUSY_BACKOFF_S = 0.1
"""First wait for busy nodes (doubling per busy answer, at most ``retry_backoff_max_s``)."""

QUEUE_FULL_RETRY_AFTER_S = 1.0
"""``Retry-After`` of a ``429`` answered because the capacity queue is full."""

REPING_FACTOR = 4.0
"""An attempt still silent after its liveness ping is pinged again every this many
``liveness_probe_s`` (1 s at the default): a non-streaming request is silent until its
answer, and a node that dies after the first ping was otherwise noticed only when its
heartbeats stopped (3 intervals: a request moved after 3.5 s instead of 0.5 s in a trial
that killed a node, 2026-12)."""

SLOW_NODE_FACTOR = 3.0
"""A node may take this many times what its own recent p90s predict before its first
chunk is overdue (``Lifecycle.first_chunk_limit``)."""


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
        if failure.late:
            flight.late += 1
        if node_id is not None and flight.blame.record(
            node_id, failure.blame, counted=fair, late=failure.late
        ):
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
            if now - attempt.started >= (attempt.first_chunk_s or lim.first_chunk_timeout_s):
                return FIRST_CHUNK
        elif now - attempt.last_activity >= lim.stall_timeout_s:
            return STALL
        if now - attempt.last_activity >= lim.liveness_probe_s:
            pinged = attempt.pinged
            if not pinged or now - pinged >= REPING_FACTOR * lim.liveness_probe_s:
                return PING
        return NO_TIMER

    def first_chunk_limit(
        self, flight: Flight, engine: m.EngineSignals | None, now: float
    ) -> float:
        """Seconds the node of ``flight``'s next attempt may take to its first chunk (a
        non-streaming request: its whole answer): the configured
        ``first_chunk_timeout_s``, or ``SLOW_NODE_FACTOR`` times what the node's own
        recent record predicts when that is longer: its TTFT p90, plus ``max_tokens`` ×
        its ITL p90 for a whole answer. After one node was late with this request, the
        next one has until the deadline: two late nodes say the work is slow (a long
        prompt, a cold or loaded fleet), and abandoning a prefill to start it cold again
        elsewhere only wastes it.

        A node that is merely slow (a CPU node, a long prompt, a long non-streaming
        answer) is not cut off at a limit sized for fast ones (docs/routing.md, "Blame").
        """
        if flight.late:
            return max(flight.deadline - now, 0.001)
        limit = self.limits.first_chunk_timeout_s
        request = flight.request
        if engine is None or engine.ttft_p90_ms is None:
            return limit
        expected_ms = engine.ttft_p90_ms
        if not request.stream and engine.itl_p90_ms is not None:
            max_tokens = request.params.get("max_tokens")
            if type(max_tokens) is int and max_tokens > 0:
                expected_ms += max_tokens * engine.itl_p90_ms
        return max(limit, SLOW_NODE_FACTOR * expected_ms / 1000.0)

    def timeout_failure(self, flight: Flight, timer: Timer) -> Failure:
        """The failure of an attempt whose first-chunk or stall timer fired.

        A first chunk that is late is ``DEFERRED`` blame: the node answered its liveness
        pings (a dead one fails at the ping), so it is slow, not gone; it counts against
        the node only if the request then succeeds elsewhere, and a request that is late
        on ``poison_after`` nodes in a row blames none of them (a prompt too long for the
        limit, or a fleet that is cold or overloaded everywhere, must not make every node
        unhealthy). A stall mid-stream is ``NOW``: the node stopped what it had started.
        """
        lim = self.limits
        attempt = flight.current
        if timer is FIRST_CHUNK:
            limit = attempt.first_chunk_s if attempt is not None else 0.0
            within = limit or lim.first_chunk_timeout_s
            detail = f"no answer from {flight.node_id} within {within:g}s"
            return Failure(errors.Timeout(detail=detail), Blame.DEFERRED, late=True)
        detail = f"{flight.node_id} stalled for {lim.stall_timeout_s:g}s"
        return Failure(errors.Timeout(detail=detail), Blame.NOW)
