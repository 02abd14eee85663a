"""Worker-side chunk coalescing (``stream_interval_ms``): fewer messages, same stream."""

from __future__ import annotations

from shared.client import FedClient
from tests.helpers import federation
from worker.backends.synthetic import SyntheticBackend, SyntheticOptions, expected_text


async def test_coalesced_stream_is_the_same_text_in_fewer_chunks(nats_url: str) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway()
        await fed.node(
            "w1",
            SyntheticBackend(SyntheticOptions(token_interval_ms=10)),
            models={"m": ("generate",)},
            stream_interval_ms=45,
        )
        await fed.seen("w1")
        client = FedClient(await fed.client())
        async with client.stream("generate", "batch", params={"max_tokens": 30}) as stream:
            chunks = [c async for c in stream]
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        assert 2 <= len(chunks) < 30
        assert sum(c.tokens for c in chunks) == 30 == stream.tokens
        assert "".join(c.text for c in chunks) == expected_text("m", "batch", None, 30)
