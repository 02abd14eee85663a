"""Request identity across gateways, pure: the claim a gateway registers for a request
and what another gateway does when it finds one (docs/protocol.md, "Request identity").

    key_of(tenant, request_id)   the bucket key: BLAKE2b-128 of the identity, in hex
    Claim                        the value: owner, body digest, state, job id, answer
    decide(claim, digest, ack)   a resend or a collision meets a claim: Verdict
    answer_of(...)               what a finished request keeps to replay (capped)

``gateway/registry.py`` reads and writes claims in JetStream; ``gateway/idempotency.py``
acts on the verdicts. No I/O, no clock here.
"""

from __future__ import annotations

import enum
import hashlib

import msgspec

from shared import headers as h

MAX_ANSWER_BYTES = 256 * 1024
"""Most bytes of an answer (body, chunks, headers) a claim keeps to replay it."""


class State(enum.Enum):
    """Where the claimed request is."""

    RUNNING = "running"
    """A gateway (the owner) holds it."""
    DONE = "done"
    """Answered successfully (a failed request's claim is deleted instead)."""


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """A successful answer, as the caller got it, to replay to a resend."""

    data: bytes = b""
    """A non-streaming result's body (empty for a stream)."""
    chunks: list[bytes] = []
    """A stream's chunks, ``seq`` 1, 2, ... as the caller got them."""
    headers: dict[str, str] = {}
    """The result's or the stream terminal's headers (the caller's trace context left out)."""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """The value under a request's key in the bucket ``fedgate_requests`` (MessagePack).

    Append-only like the wire Structs: gateways of two versions share the bucket."""

    owner: str
    """The gateway that runs (or ran) the request: its takeover subject is
    ``Subjects.takeover(owner)``."""
    digest: bytes
    """BLAKE2b-128 of the request body: only the same bytes are the same request."""
    state: State = State.RUNNING
    job_id: str = ""
    """The owner's job id for it on a node (to cancel it when the owner is gone)."""
    answer: Answer | None = None
    """``DONE``: the answer to replay; None when it is not kept (``unreplayable`` says why)."""
    unreplayable: str = ""
    at_s: float = 0.0
    """When it was written (the writer's wall clock, Unix seconds; for people)."""


class Takeover(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``fed.takeover.<gateway_id>``: a resend another gateway received (JSON)."""

    tenant_id: str
    request_id: str
    digest: str
    """The resend's body digest, hex."""
    reply: str
    """The resend's reply subject: where the answer goes from now on."""


class Taken(enum.Enum):
    """The owner's answer to a ``Takeover`` (body ``{"status": ...}``), or what its
    silence means."""

    TAKEN = "taken"
    """It holds the request and answers the new reply subject from now on."""
    UNKNOWN = "unknown"
    """It does not hold the request (finished, or never got it)."""
    REFUSED = "refused"
    """It holds a request of that identity with another body."""
    GONE = "gone"
    """Never sent: "no responders", the owner is gone."""
    SILENT = "silent"
    """Never sent: no answer in time (the owner lives but is stuck, or the network)."""


class TakeoverReply(msgspec.Struct, frozen=True, kw_only=True):
    status: Taken


encoder = msgspec.json.Encoder()
claim_encoder = msgspec.msgpack.Encoder()
claim_decoder = msgspec.msgpack.Decoder(Claim)
takeover_decoder = msgspec.json.Decoder(Takeover)
takeover_reply_decoder = msgspec.json.Decoder(TakeoverReply)


class Verdict(enum.Enum):
    """What a gateway does with a request whose identity another request claimed."""

    REFUSE = "refuse"
    """``409 duplicate``: another body, or no ``Fed-Ack`` (not a resend)."""
    REPLAY = "replay"
    """Answered: send the stored answer, do not run it again."""
    UNREPLAYABLE = "unreplayable"
    """Answered, but the answer was not kept: ``409`` saying so."""
    ASK_OWNER = "ask_owner"
    """Running: the owner takes the resend over, or, gone, is replaced."""


def key_of(tenant: str, request_id: str) -> str:
    """The bucket key of an identity (KV keys allow few characters: a hex digest of
    the tenant, length-prefixed so that no two identities meet, and the request id)."""
    ident = f"{len(tenant)}:{tenant}{request_id}".encode()
    return hashlib.blake2b(ident, digest_size=16).hexdigest()


def decide(claim: Claim, digest: bytes, acked: bool) -> Verdict:
    """A request of ``claim``'s identity (its body's ``digest``; ``acked``: it carries
    ``Fed-Ack``, the sign of a resend): only the same bytes resent are the same request."""
    if not acked or digest != claim.digest:
        return Verdict.REFUSE
    if claim.state is State.RUNNING:
        return Verdict.ASK_OWNER
    return Verdict.REPLAY if claim.answer is not None else Verdict.UNREPLAYABLE


def refusal(claim: Claim, request_id: str, acked: bool, ttl_s: float) -> str:
    """The message of the ``409 duplicate`` for a ``REFUSE`` or ``UNREPLAYABLE`` verdict."""
    if claim.state is State.RUNNING:
        why = " with a different body" if acked else ""
        return f"request_id {request_id} is already in flight{why}"
    if acked and claim.answer is None and claim.unreplayable:
        return (
            f"request_id {request_id} was already answered and cannot be replayed "
            f"({claim.unreplayable}): use a new request_id to run it again"
        )
    why = " with a different body" if acked else ""
    return (
        f"request_id {request_id} was already answered{why} (ids are kept {ttl_s:g} s): "
        "use a new request_id"
    )


def answer_of(
    stream: bool, data: bytes, chunks: list[bytes], headers: dict[str, str], gapped: bool
) -> tuple[Answer | None, str]:
    """What a successful request keeps to replay, or None and why it cannot."""
    if gapped:
        return None, "the gateway missed some of its chunks"
    kept = {k: v for k, v in headers.items() if k not in (h.TRACEPARENT, h.TRACESTATE)}
    size = len(data) + sum(map(len, chunks)) + sum(len(k) + len(v) for k, v in kept.items())
    if size > MAX_ANSWER_BYTES:
        return None, f"its answer of {size} bytes is over the {MAX_ANSWER_BYTES} kept"
    if stream:
        return Answer(chunks=list(chunks), headers=kept), ""
    return Answer(data=data, headers=kept), ""


def replay_headers(answer: Answer, trace: dict[str, str] | None) -> dict[str, str]:
    """The stored answer's headers, with the resending caller's trace context."""
    return {**answer.headers, **trace} if trace else dict(answer.headers)
