"""Errors of the federation, each with its contract code.

    FedError                      (code, Fed-Error)
    ├── BadRequest                400 bad_request
    │   └── PayloadTooLarge       400 bad_request        (over NATS; the HTTP front door: 413)
    ├── PolicyViolation           403 policy_violation
    ├── NoCapacity                404 no_capacity
    ├── Duplicate                 409 duplicate
    ├── Overloaded                429 overloaded
    ├── SloUnmet                  429 slo_unmet          (qos.max_ttft_ms: no node now; addition)
    ├── Cancelled                 499 cancelled
    ├── Internal                  500 internal
    ├── Interrupted               502 interrupted
    ├── UpstreamError             502 upstream_error     (the node's engine failed; addition)
    ├── AllNodesUnhealthy         503 all_unhealthy
    ├── SloUnattainable           503 slo_unattainable   (qos.max_ttft_ms: no node ever; addition)
    ├── Timeout                   504 timeout
    ├── Unavailable               503 unavailable        (client side: no gateway answered)
    ├── NodeUnavailable           503 node_unavailable   (node -> gateway: cannot serve it here)
    ├── NodeDraining              503 node_draining      (node -> gateway: stopping)
    ├── NodeUnreachable           503 node_unreachable   (core only, never on the wire)
    └── CircuitOpen               503 circuit_open       (core only, never on the wire)

Blame (who is at fault, docs/routing.md): each class says whether the gateway tries
another node (``retry_elsewhere``) and whether the failure counts against the node's
health and circuit (``node_fault``). A node reports its errors with ``err.headers()``;
the gateway looks the kind up with ``blame(kind)``.

On the wire an error is a message with an empty body and the headers
``Nats-Service-Error-Code``, ``Nats-Service-Error`` and ``Fed-Error``; ``from_headers``
maps such a message back to the matching class (the Python client raises it).
"""

from __future__ import annotations

import math
from typing import ClassVar

from shared import headers as h


class FedError(Exception):
    """Base of every fedgate error; ``code`` is HTTP-like, ``kind`` the stable machine code."""

    code: ClassVar[int] = 500
    kind: ClassVar[str] = "internal"
    retry_elsewhere: ClassVar[bool] = True
    """A node reporting this error: another node may well succeed."""
    node_fault: ClassVar[bool] = True
    """A node reporting this error: it counts against the node (unless poison)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.kind.replace("_", " "))
        self.message = message or self.kind.replace("_", " ")

    def headers(self) -> dict[str, str]:
        """The error headers of the contract."""
        return {
            h.ERROR_CODE: str(self.code),
            h.ERROR: self.message,
            h.FED_ERROR: self.kind,
        }


class BadRequest(FedError):
    code, kind = 400, "bad_request"
    retry_elsewhere = node_fault = False


class PolicyViolation(FedError):
    code, kind = 403, "policy_violation"
    retry_elsewhere = node_fault = False

    def __init__(self, capability: str = "", detail: str = "") -> None:
        self.capability = capability
        super().__init__(f"Policy violation: {detail or 'no allowed node serves ' + capability}")


class _CapabilityError(FedError):
    """An error about a capability, with the reference's message unless ``detail``."""

    template: ClassVar[str] = "{capability}"

    def __init__(self, capability: str = "", detail: str = "") -> None:
        self.capability = capability
        super().__init__(detail or self.template.format(capability=capability))


class NoCapacity(_CapabilityError):
    code, kind = 404, "no_capacity"
    node_fault = False  # a node that does not serve it (catalog out of date): try another
    template = "No nodes available for capability: {capability}"


class Duplicate(FedError):
    code, kind = 409, "duplicate"
    node_fault = False


class PayloadTooLarge(BadRequest):
    """The request exceeds the size limit (the contract's oversize ``400 bad_request``;
    the HTTP front door answers it as ``413``)."""

    http_status: ClassVar[int] = 413


class RetryAfter(FedError):
    """An error that says when to come back: ``retry_after_s`` (seconds, None when
    unknown), sent as ``Retry-After`` in whole seconds and read back by ``from_headers``."""

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """The error headers, with ``Retry-After`` (whole seconds) when known."""
        out = super().headers()
        if self.retry_after_s is not None:
            out[h.RETRY_AFTER] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class Overloaded(RetryAfter):
    code, kind = 429, "overloaded"
    node_fault = False  # busy is not broken; spends the retry budget like any failure


class RateLimited(Overloaded):
    """The caller's tenant is over one of its limits (concurrent requests, requests or
    tokens per minute, token budget): ``Retry-After`` says when it has room again. Never
    retried elsewhere (every gateway enforces the same limits)."""

    code, kind = 429, "rate_limited"
    retry_elsewhere = False


class Cancelled(FedError):
    code, kind = 499, "cancelled"
    node_fault = False  # from a node: its job was superseded or stopped; try another


class Internal(FedError):
    code, kind = 500, "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(f"Internal error: {message}" if message else "Internal error")


class Interrupted(FedError):
    code, kind = 502, "interrupted"


class SloUnmet(RetryAfter):
    """No node is predicted to meet the request's ``qos.max_ttft_ms`` now, though one
    could when less loaded: answered at once (never queued to miss its SLO), with
    ``Retry-After``. Not an ``Overloaded``: the engine queues those."""

    code, kind = 429, "slo_unmet"
    retry_elsewhere = False
    node_fault = False


class SloUnattainable(FedError):
    """No node could meet the request's ``qos.max_ttft_ms`` even idle (the prompt's
    predicted prefill alone exceeds it): retrying will not help."""

    code, kind = 503, "slo_unattainable"
    retry_elsewhere = False
    node_fault = False


class AllNodesUnhealthy(_CapabilityError):
    code, kind = 503, "all_unhealthy"
    template = "All nodes unhealthy for capability: {capability}"


class UpstreamError(FedError):
    """The node's inference engine failed (5xx, connection refused, a broken reply)."""

    code, kind = 502, "upstream_error"


class Timeout(FedError):
    code, kind = 504, "timeout"

    def __init__(self, timeout_s: float | None = None, detail: str = "") -> None:
        self.timeout_s = timeout_s
        text = detail or (f"Timeout after {timeout_s:g}s" if timeout_s is not None else "Timeout")
        super().__init__(text)


class Unavailable(FedError):
    code, kind = 503, "unavailable"


class NodeUnavailable(FedError):
    """The node cannot serve this request (engine down, model missing on it): its fault."""

    code, kind = 503, "node_unavailable"


class NodeDraining(FedError):
    """The node is stopping: try another, no fault."""

    code, kind = 503, "node_draining"
    node_fault = False


class NodeUnreachable(FedError):
    code, kind = 503, "node_unreachable"

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        super().__init__(f"Node unreachable: {node_id}")


class CircuitOpen(FedError):
    code, kind = 503, "circuit_open"

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        super().__init__(f"Circuit breaker open for node: {node_id}")


_BY_KIND: dict[str, type[FedError]] = {
    cls.kind: cls
    for cls in (
        BadRequest,
        PolicyViolation,
        NoCapacity,
        Duplicate,
        RateLimited,  # before Overloaded: an unknown kind with 429 reads as overloaded
        Overloaded,
        SloUnmet,
        Cancelled,
        Internal,
        Interrupted,
        UpstreamError,
        AllNodesUnhealthy,
        SloUnattainable,
        Timeout,
        Unavailable,
    )
}
_NODE_KINDS: dict[str, type[FedError]] = {
    **_BY_KIND,
    NodeUnavailable.kind: NodeUnavailable,
    NodeDraining.kind: NodeDraining,
}


def blame(kind: str, code: int = 500) -> type[FedError]:
    """The class of an error a node reported (an unknown kind: by its code, else
    ``Internal``): read its ``retry_elsewhere`` and ``node_fault``."""
    cls = _NODE_KINDS.get(kind)
    if cls is None:
        cls = _BY_CODE.get(code, Internal)
    return cls


_BY_CODE: dict[int, type[FedError]] = {
    cls.code: cls for cls in _BY_KIND.values() if cls not in (SloUnmet, SloUnattainable)
}


def from_headers(headers: dict[str, str] | None) -> FedError | None:
    """The error a message's headers carry, or None when it carries none."""
    if not headers:
        return None
    kind = headers.get(h.FED_ERROR)
    code = headers.get(h.ERROR_CODE)
    if kind is None and code is None:
        return None
    cls = _BY_KIND.get(kind or "")
    if cls is None and code is not None and code.isdigit():
        cls = _BY_CODE.get(int(code), Internal)
    cls = cls or Internal
    err = cls.__new__(cls)
    FedError.__init__(err, headers.get(h.ERROR, "") or cls.kind)
    if isinstance(err, RetryAfter):
        ra = headers.get(h.RETRY_AFTER, "")
        err.retry_after_s = float(ra) if ra.replace(".", "", 1).isdigit() else None
    return err
