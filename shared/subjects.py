"""Every subject fedgate uses, built from the two configurable roots.

The public root (default ``infer``) is where services ask; the internal root (default
``fed``) is the federation's own traffic. No other module writes a subject string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CAPABILITY_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
NODE_ID_RE = re.compile(r"^[^.*>\s]{1,128}$")
GATEWAY_QUEUE = "fedgate-gateways"


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject builders for one pair of roots."""

    public: str = "infer"
    internal: str = "fed"
    _seen: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Valid ``<public>.<capability>`` subjects already parsed, with their capability."""

    # services
    @property
    def infer_all(self) -> str:
        return f"{self.public}.>"

    def infer(self, capability: str) -> str:
        return f"{self.public}.{capability}"

    def cancel(self, request_id: str) -> str:
        return f"{self.internal}.cancel.{request_id}"

    @property
    def cancel_all(self) -> str:
        return f"{self.internal}.cancel.*"

    # workers
    def heartbeat(self, node_id: str) -> str:
        return f"{self.internal}.heartbeat.{node_id}"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.internal}.heartbeat.*"

    def leave(self, node_id: str) -> str:
        return f"{self.internal}.leave.{node_id}"

    @property
    def leave_all(self) -> str:
        return f"{self.internal}.leave.*"

    def node_infer(self, node_id: str) -> str:
        return f"{self.internal}.node.{node_id}.infer"

    def node_cancel(self, node_id: str) -> str:
        return f"{self.internal}.node.{node_id}.cancel"

    def node_ping(self, node_id: str) -> str:
        return f"{self.internal}.node.{node_id}.ping"

    # gateways among themselves
    @property
    def outcomes(self) -> str:
        """Every gateway's attempt and canary outcomes (gateway/shared_outcomes.py)."""
        return f"{self.internal}.outcomes"

    @property
    def fair(self) -> str:
        """Every gateway's fair-share charges, waiting tenants and holds
        (gateway/shared_fair.py)."""
        return f"{self.internal}.fair"

    def prefix(self, node_id: str) -> str:
        """Prompts routed to ``node_id`` (gateway/shared_prefix.py; MessagePack)."""
        return f"{self.internal}.prefix.{node_id}"

    @property
    def prefix_all(self) -> str:
        return f"{self.internal}.prefix.*"

    def takeover(self, gateway_id: str) -> str:
        """Where another gateway hands ``gateway_id`` a resend of a request it holds
        (gateway/idempotency.py; request/reply, "no responders" = that gateway is gone)."""
        return f"{self.internal}.takeover.{gateway_id}"

    # inspection
    @property
    def gateway_nodes(self) -> str:
        return f"{self.internal}.gateway.nodes"

    @property
    def gateway_stats(self) -> str:
        return f"{self.internal}.gateway.stats"

    def gateway_route(self, capability: str) -> str:
        return f"{self.internal}.gateway.route.{capability}"

    @property
    def gateway_route_all(self) -> str:
        return f"{self.internal}.gateway.route.*"

    @property
    def decisions(self) -> str:
        return f"{self.internal}.decisions"

    # parsing
    def capability_of(self, subject: str) -> str | None:
        """The capability token of an ``infer.<capability>`` subject, or None if invalid."""
        cap = self._seen.get(subject)
        if cap is not None:
            return cap
        prefix = self.public + "."
        cap = subject[len(prefix) :]
        if not subject.startswith(prefix) or not CAPABILITY_RE.match(cap):
            return None
        if len(self._seen) < 4096:  # a small cache: real fleets have few capabilities
            self._seen[subject] = cap
        return cap

    @staticmethod
    def last_token(subject: str) -> str:
        """The last token of a subject (the node id of a heartbeat or leave)."""
        return subject.rpartition(".")[2]


DEFAULT = Subjects()
