"""Errors of the federation, each with its contract code.

    FedError                      (code, Fed-Error)
    ├── BadRequest                400 bad_request
    ├── PolicyViolation           403 policy_violation
    ├── NoCapacity                404 no_capacity
    ├── Duplicate                 409 duplicate
    ├── Overloaded                429 overloaded
    ├── Cancelled                 499 cancelled
    ├── Internal                  500 internal
    ├── Interrupted               502 interrupted
    ├── AllNodesUnhealthy         503 all_unhealthy
    ├── Timeout                   504 timeout
    ├── Unavailable               503 unavailable        (client side: no gateway answered)
    ├── NodeUnreachable           503 node_unreachable   (core only, never on the wire)
    └── CircuitOpen               503 circuit_open       (core only, never on the wire)

On the wire an error is a message with an empty body and the headers
``Nats-Service-Error-Code``, ``Nats-Service-Error`` and ``Fed-Error``; ``from_headers``
maps such a message back to the matching class (the Python client raises it).
"""

from __future__ import annotations

from typing import ClassVar

from shared import headers as h


class FedError(Exception):
    """Base of every fedgate error; ``code`` is HTTP-like, ``kind`` the stable machine code."""

    code: ClassVar[int] = 500
    kind: ClassVar[str] = "internal"

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


class PolicyViolation(FedError):
    code, kind = 403, "policy_violation"

    def __init__(self, capability: str = "", detail: str = "") -> None:
        self.capability = capability
        super().__init__(
            f"Privacy policy violation: {detail or 'no allowed node serves ' + capability}"
        )


class _CapabilityError(FedError):
    """An error about a capability, with the reference's message unless ``detail``."""

    template: ClassVar[str] = "{capability}"

    def __init__(self, capability: str = "", detail: str = "") -> None:
        self.capability = capability
        super().__init__(detail or self.template.format(capability=capability))


class NoCapacity(_CapabilityError):
    code, kind = 404, "no_capacity"
    template = "No nodes available for capability: {capability}"


class Duplicate(FedError):
    code, kind = 409, "duplicate"


class Overloaded(FedError):
    code, kind = 429, "overloaded"


class Cancelled(FedError):
    code, kind = 499, "cancelled"


class Internal(FedError):
    code, kind = 500, "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(f"Internal error: {message}" if message else "Internal error")


class Interrupted(FedError):
    code, kind = 502, "interrupted"


class AllNodesUnhealthy(_CapabilityError):
    code, kind = 503, "all_unhealthy"
    template = "All nodes unhealthy for capability: {capability}"


class Timeout(FedError):
    code, kind = 504, "timeout"

    def __init__(self, timeout_s: float | None = None, detail: str = "") -> None:
        self.timeout_s = timeout_s
        text = detail or (f"Timeout after {timeout_s:g}s" if timeout_s is not None else "Timeout")
        super().__init__(text)


class Unavailable(FedError):
    code, kind = 503, "unavailable"


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
        Overloaded,
        Cancelled,
        Internal,
        Interrupted,
        AllNodesUnhealthy,
        Timeout,
        Unavailable,
    )
}
_BY_CODE: dict[int, type[FedError]] = {cls.code: cls for cls in _BY_KIND.values()}


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
    return err
