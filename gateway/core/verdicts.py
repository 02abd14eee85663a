"""What a failed or finished request tells its caller: the error to answer when no
further node can be tried, a node's error reply judged, the tokens to report, and the
requests refused before they are accepted. Pure functions over a ``Flight`` (the
decisions that use them are ``gateway/core/lifecycle.py``).
"""

from __future__ import annotations

import msgspec

from gateway.core.cooldown import busy_seconds
from gateway.core.flight import Flight
from gateway.core.steps import Failure
from gateway.outcome import Verdict, judge_node_error
from shared import errors
from shared import headers as h
from shared import messages as m

NOT_ON_THE_WIRE = frozenset(
    {"node_draining", "node_unreachable", "node_unavailable", "circuit_open", "unavailable"}
)
"""Error kinds of nodes or the core that the contract does not define for services."""


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


class _Figures(msgspec.Struct):
    tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None


_figures_decoder = msgspec.json.Decoder(_Figures)


def answered(flight: Flight, node_headers: dict[str, str], data: bytes) -> tuple[int, float | None]:
    """A successful answer's output tokens, and its decode phase as the node timed it
    (seconds from its first token to its answer: a result's ``latency_ms - ttft_ms``;
    None for a stream, whose first chunk the gateway times itself, or a node that does
    not say)."""
    if flight.request.stream and flight.failovers:
        # After a failover the caller's total is what it received, whatever the last
        # node counted (it may or may not include ``resume.tokens``).
        return flight.relayed()[1], None
    text = node_headers.get(h.TOKENS, "")
    if text.isdigit():
        return int(text), None
    if data:  # a result (our nodes send no headers with it): read it
        try:
            figures = _figures_decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return 0, None
        ttft = figures.ttft_ms
        if ttft is None or not 0.0 <= ttft <= figures.latency_ms:
            return figures.tokens, None
        return figures.tokens, (figures.latency_ms - ttft) / 1000.0
    return 0, None


def answered_tokens(flight: Flight, node_headers: dict[str, str], data: bytes) -> int:
    """The tokens to report for a successful answer (``answered``'s first part)."""
    return answered(flight, node_headers, data)[0]
