"""The demo (synthetic) backend drops nothing in silence: what its words cannot honour
is a 400 naming the parameter, over NATS as over HTTP (docs/llm.md)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import federation
from tests.integration.test_protocol import fast


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "x"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
    ],
)
async def test_unsupported_params_are_a_400(
    nats_url: str, params: dict[str, object], named: str
) -> None:
    async with federation(nats_url) as fed:
        await fed.gateway(fast())
        await fed.node("s1", models={"m": ("generate",)})
        await fed.seen("s1")
        nc = await fed.client()
        body = {"input": "hi", "model": "m", "params": params}
        msg = await nc.request("infer.generate", json.dumps(body).encode(), timeout=5)
        assert msg.headers is not None and msg.headers.get("Fed-Error") == "bad_request"
        assert named in msg.headers["Nats-Service-Error"]
        ok = await nc.request(
            "infer.generate",
            b'{"input": "hi", "params": {"max_tokens": 2, "temperature": 0}}',
            timeout=5,
        )
        assert json.loads(ok.data)["tokens"] == 2
