"""The ground of every wire message (docs/protocol.md): the enums, the constrained
scalar types and ``Base``, the frozen, keyword-only Struct every message derives from.

``shared.messages`` re-exports every name here.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from msgspec import Meta

# -- enums -------------------------------------------------------------------------


class Capability(enum.StrEnum):
    """Well-known capabilities; any other ``[a-z0-9_-]`` token is a custom one."""

    TRANSCRIBE = "transcribe"
    SYNTHESIZE = "synthesize"
    GENERATE = "generate"
    CODE = "code"
    EMBED = "embed"
    IMAGE_GEN = "image_gen"


class Privacy(enum.StrEnum):
    """Privacy levels, ordered: public < internal < confidential < restricted."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        """0 for public ... 3 for restricted (compare ranks, never the strings)."""
        return _PRIVACY_RANK[self]


_PRIVACY_RANK = {
    Privacy.PUBLIC: 0,
    Privacy.INTERNAL: 1,
    Privacy.CONFIDENTIAL: 2,
    Privacy.RESTRICTED: 3,
}

# -- constrained scalar types --------------------------------------------------------

RequestId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
Token = Annotated[str, Meta(pattern=r"^[^.*>\s]{1,128}$")]
Millis = Annotated[int, Meta(ge=1, le=86_400_000)]
ShortText = Annotated[str, Meta(max_length=256)]


class Base(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire message."""
