"""Prefix-cache awareness (issue 14, point 2): a prompt's block hashes, tokenizer-free,
and the wire form gateways share what they routed by. Pure: no I/O, no clock.

**Block hashes.** An engine with prefix caching keeps the KV of a prompt's leading tokens
in blocks keyed by their whole prefix: vLLM's automatic prefix caching hashes each full
block of ``block_size`` (16) tokens together with its parent block's hash; SGLang's
radix cache is a tree of token sequences, the same thing at token granularity. A request
reuses a node's cache for its longest prefix of whole blocks that node still holds.
The gateway has no tokenizer, so it cuts the prompt's UTF-8 **bytes** into blocks of
``block_bytes`` (default 256) and keys block ``i`` by the whole prefix
``bytes[0 : (i + 1) * block_bytes]``, as sglang-router's approximate tree works on raw
text rather than tokens, and llm-d's approximate prefix-cache producer cuts the prompt
into character blocks hashed as a chain (its router has no tokenizer either). Only
whole blocks count (an engine caches only full blocks).

``key_i = int.from_bytes(BLAKE2b-64(len(ns) as 2 bytes big-endian || ns ||
bytes[0 : (i + 1) * B]), "little")``, ``ns`` the namespace (the model: one prompt on two
models is two caches). Computed incrementally, one running BLAKE2b state updated with
each block and copied to read it: each key is chained through the state to all of its
predecessors and every byte is hashed once (bench/bench_prefix.py: ~1 µs a block, mostly
copying the state and the digest, not hashing; a fresh ``blake2b(prev_key || block)`` per block
measured 10-25 % slower). Any language reproduces it with a standard BLAKE2b (digest size 8).

Why 256 bytes: about 64 tokens of English text (BPE tokenizers of Llama 3 / GPT-4 class
average ~4 bytes a token), i.e. four vLLM blocks. Byte blocks do not align with token
blocks anyway, so a finer grain buys little precision, while every hash costs time on the
hot path, index memory and wire bytes: a 32 KB prompt is 128 keys (~1.2 KB on the wire),
where 64-byte blocks would make it 512. A shared prefix loses at most its last partial
block (< 64 tokens of prefill). Configurable per call (``block_bytes``); all gateways and
the scorer must use the same value.

The index of what each node holds is gateway/prefix_index.py; the cost model that weighs
a cache hit against load, gateway/prefix_cost.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shared.messages import Base

DEFAULT_BLOCK_BYTES = 256
"""Bytes per block (~64 tokens); see the module docstring for why."""
MAX_EVENT_BLOCKS = 4096
"""Most keys in one ``ObservedPrefix`` (1 MB of prompt at 256-byte blocks)."""

_ROLE_END = b"\x1f"  # unit separator: after a message's role (and name)
_PART_END = b"\x1d"  # group separator: between content and tool calls
_MSG_END = b"\x1e"  # record separator: after each message
_JSON = msgspec.json.Encoder(order="sorted")


# -- block hashes ---------------------------------------------------------------------


def block_hashes(
    prompt: str | bytes, *, namespace: str = "", block_bytes: int = DEFAULT_BLOCK_BYTES
) -> list[int]:
    """The prefix keys of ``prompt``'s whole blocks: ``len(prompt_bytes) // block_bytes``
    unsigned 64-bit ints, key ``i`` identifying ``prompt_bytes[: (i + 1) * block_bytes]``
    under ``namespace`` (the model). A ``str`` is UTF-8 encoded. Two prompts share their
    first ``k`` keys iff their first ``k`` blocks are equal (up to 2^-64 collisions)."""
    if block_bytes < 1:
        raise ValueError("block_bytes must be >= 1")
    data = prompt.encode() if isinstance(prompt, str) else prompt
    end = len(data) - len(data) % block_bytes
    if not end:
        return []
    ns = namespace.encode()
    state = hashlib.blake2b(len(ns).to_bytes(2, "big") + ns, digest_size=8)
    update, copy, from_bytes = state.update, state.copy, int.from_bytes
    view = memoryview(data)
    out: list[int] = []
    append = out.append
    for i in range(0, end, block_bytes):
        update(view[i : i + block_bytes])
        append(from_bytes(copy().digest(), "little"))
    return out


def render_chat(messages: Iterable[Mapping[str, Any]], system: str | None = None) -> bytes:
    """The bytes a chat is hashed as: ``system`` (a system prompt given apart from the
    messages, as some APIs do) first, then each OpenAI-style message in the order given
    (where the system message already is first: the engine's chat template renders them
    in that order too, so they are not reordered). A message renders as ``role[\\x1fname]
    \\x1f content [\\x1d tool_calls as sorted JSON] \\x1e``; content is a string, or a list
    of parts whose ``text`` parts are concatenated and other parts (images, audio) rendered
    as sorted JSON. Self-delimiting, so a conversation's rendering is a prefix of the
    rendering of any later turn of it (multi-turn chats share their leading blocks)."""
    out = bytearray()
    if system:
        out += b"system" + _ROLE_END + system.encode() + _MSG_END
    for message in messages:
        out += str(message.get("role", "")).encode()
        name = message.get("name")
        if name:
            out += _ROLE_END + str(name).encode()
        out += _ROLE_END
        content = message.get("content")
        if isinstance(content, str):
            out += content.encode()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    out += str(part.get("text", "")).encode()
                else:
                    out += _JSON.encode(part)
        elif content is not None:
            out += _JSON.encode(content)
        calls = message.get("tool_calls")
        if calls:
            out += _PART_END + _JSON.encode(calls)
        out += _MSG_END
    return bytes(out)


def chat_block_hashes(
    messages: Iterable[Mapping[str, Any]],
    *,
    system: str | None = None,
    namespace: str = "",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> list[int]:
    """``block_hashes(render_chat(messages, system), ...)``: the keys of a chat request."""
    return block_hashes(render_chat(messages, system), namespace=namespace, block_bytes=block_bytes)


# -- the wire form --------------------------------------------------------------------

BlockKey = Annotated[int, Meta(ge=0)]
"""A block key: an unsigned 64-bit int (a larger one decodes, and matches nothing)."""


class ObservedPrefix(Base, frozen=True, kw_only=True):
    """A gateway routed a prompt to a node: published after each routed request
    (proposed subject ``fed.prefix.<node_id>``), consumed by every gateway into its
    ``PrefixIndex`` (``prefix_index.apply_observed``), so all of them hold the same
    index. Fields append-only, like every wire Struct.

    Encoded as MessagePack (``encode_observed``), not the protocol's JSON: a key is 9
    bytes there (a 32 KB prompt's 128 keys: 1,201 bytes in all) against ~20 digits in
    JSON (2,661 bytes), and 64-bit ints are exact in any MessagePack reader, where a
    JavaScript JSON parser rounds them past 2^53. This is gateway-to-gateway traffic,
    one event per routed request, read by every gateway."""

    node_id: str
    blocks: Annotated[list[BlockKey], Meta(max_length=MAX_EVENT_BLOCKS)]
    """The prompt's keys, block 0 first (``block_hashes``)."""
    at_s: float
    """When it was routed: the sender's wall clock, Unix seconds."""
    origin: str = ""
    """The publishing gateway's id (lets a gateway skip its own events)."""


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ObservedPrefix)


def encode_observed(event: ObservedPrefix) -> bytes:
    """``event`` as MessagePack bytes."""
    return _ENCODER.encode(event)


def decode_observed(raw: bytes) -> ObservedPrefix:
    """An ``ObservedPrefix`` from MessagePack; raises ``msgspec.ValidationError`` /
    ``msgspec.DecodeError`` on a malformed one."""
    return _DECODER.decode(raw)
