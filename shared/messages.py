"""Wire messages of the fedgate protocol v1 (see docs/protocol.md), and their codecs.

Every message is a msgspec Struct on one frozen, keyword-only base. Wire Structs evolve
append-only and ignore unknown fields (rolling upgrades); field constraints reject
nonsense (negative timeouts, absurd QoS values) at decode time, which the gateway turns
into a ``400 bad_request``. Encoders and decoders are built once, at import, here.

The Structs live by subject matter and are all re-exported here, so that
``from shared import messages as m; m.InferRequest`` reads one module global as before:

* ``shared.message_base``: the enums (``Capability``, ``Privacy``), the constrained
  scalar types and ``Base``;
* ``shared.message_requests``: one request, from the service to the node and back
  (``InferRequest``, ``QoS``, ``Dispatch``, ``Chunk``, ``Result``, the cancels);
* ``shared.message_nodes``: what is known of the nodes (``Heartbeat``,
  ``EngineSignals``, ``Leave``, the gateways' shared ``OutcomeBatch``);
* ``shared.message_inspection``: ``Decision`` and the read models (``NodesReply``,
  ``StatsReply``, ``RouteReply``, ``GatewayLoad``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from shared.message_base import (
    Base,
    Capability,
    Millis,
    Privacy,
    RequestId,
    ShortText,
    Token,
)
from shared.message_inspection import (
    CandidateView,
    Decision,
    GatewayLoad,
    NodesReply,
    NodeView,
    PolicyWeight,
    RouteReply,
    StatsReply,
    TenantLimitView,
)
from shared.message_nodes import (
    EngineSignals,
    Heartbeat,
    Leave,
    ModelInfo,
    OutcomeBatch,
    OutcomeEvent,
    Quantity,
)
from shared.message_requests import (
    ANONYMOUS_HTTP_TENANT,
    DEFAULT_QOS,
    CancelNode,
    CancelRequest,
    Chunk,
    DirectChunk,
    DirectReply,
    Dispatch,
    InferRequest,
    QoS,
    QoSRequirements,
    Result,
    Resume,
)

__all__ = [
    "ANONYMOUS_HTTP_TENANT",
    "DEFAULT_QOS",
    "Base",
    "CancelNode",
    "CancelRequest",
    "CandidateView",
    "Capability",
    "Chunk",
    "Decision",
    "DirectChunk",
    "DirectReply",
    "Dispatch",
    "EngineSignals",
    "GatewayLoad",
    "Heartbeat",
    "InferRequest",
    "Leave",
    "Millis",
    "ModelInfo",
    "NodeView",
    "NodesReply",
    "OutcomeBatch",
    "OutcomeEvent",
    "PolicyWeight",
    "Privacy",
    "QoS",
    "QoSRequirements",
    "Quantity",
    "RequestId",
    "Result",
    "Resume",
    "RouteReply",
    "SafeDecoder",
    "ShortText",
    "StatsReply",
    "TenantLimitView",
    "Token",
    "any_decoder",
    "cancel_decoder",
    "cancel_request_decoder",
    "chunk_decoder",
    "decision_decoder",
    "direct_chunk_decoder",
    "dispatch_decoder",
    "encode",
    "encoder",
    "heartbeat_decoder",
    "leave_decoder",
    "nodes_reply_decoder",
    "request_decoder",
    "result_decoder",
    "route_reply_decoder",
    "stats_reply_decoder",
]

T = TypeVar("T")

# -- codecs, built once ------------------------------------------------------------


class SafeDecoder(Generic[T]):
    """A msgspec JSON decoder whose only errors are ``msgspec.DecodeError`` (and its
    ``ValidationError`` subclass): invalid UTF-8 inside a string and nesting too deep for
    the recursion limit surface from msgspec as other exceptions, mapped here."""

    __slots__ = ("_decode",)

    def __init__(self, type: type[T]) -> None:
        self._decode = msgspec.json.Decoder(type).decode

    def decode(self, data: bytes) -> T:
        """Decode ``data`` or raise ``msgspec.DecodeError``."""
        try:
            return self._decode(data)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise msgspec.DecodeError(f"undecodable JSON: {type(exc).__name__}") from None


encoder = msgspec.json.Encoder()
request_decoder = SafeDecoder(InferRequest)
dispatch_decoder = SafeDecoder(Dispatch)
chunk_decoder = SafeDecoder(Chunk)
direct_chunk_decoder = SafeDecoder(DirectChunk)
result_decoder = SafeDecoder(Result)
heartbeat_decoder = SafeDecoder(Heartbeat)
leave_decoder = SafeDecoder(Leave)
cancel_decoder = SafeDecoder(CancelNode)
cancel_request_decoder = SafeDecoder(CancelRequest)
decision_decoder = SafeDecoder(Decision)
nodes_reply_decoder = SafeDecoder(NodesReply)
stats_reply_decoder = SafeDecoder(StatsReply)
route_reply_decoder = SafeDecoder(RouteReply)
any_decoder: SafeDecoder[Any] = SafeDecoder(object)


def encode(msg: Any) -> bytes:
    """Encode any Struct (or plain data) to JSON bytes."""
    return encoder.encode(msg)
