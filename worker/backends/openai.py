"""A backend for any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, ...).

``generate``/``code`` stream from the upstream, always with ``"stream": true`` (a
non-streaming request is the same stream collected by the node):

- a request whose ``params.messages`` holds a chat (what the gateway's HTTP front door
  sends for ``/v1/chat/completions``) goes to ``/v1/chat/completions``;
- a plain prompt goes to ``/v1/completions`` (raw continuation), or, with
  ``plain_as_chat``, to ``/v1/chat/completions`` as one user message.

``embed`` asks ``/v1/embeddings``. ``params`` map onto the upstream request
(``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, penalties).

Resume (mid-stream failover): a completion continues after ``input + resume_text``; a
chat gets the partial answer as a final assistant message with
``continue_final_message`` (vLLM; llama.cpp and Ollama continue a final assistant
message on their own). ``max_tokens`` counts the whole output, so the upstream is asked
for ``max_tokens - resume_tokens``.

Upstream failures are mapped at one boundary (``_status_error``) onto the contract:

    upstream 400/404/413/422  -> 400 bad_request   (not retried elsewhere)
    upstream 429              -> 429 overloaded    (another node is tried)
    upstream 503, unreachable -> 503 node_draining (another node is tried; not ready)
    upstream timeout          -> 504 timeout
    anything else             -> 502 internal      (failover, or retry elsewhere)

``ready()`` probes ``/v1/models`` (cached for ``ready_ttl_s``) so the node can advertise
itself as draining while its upstream is down instead of failing every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from worker.backends.base import BackendError, Job, Piece

log = logging.getLogger("fedgate.worker.openai")

SAMPLING_PARAMS = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
"""Request ``params`` copied onto the upstream request as they are."""

_BAD_REQUEST = frozenset({400, 404, 413, 422})
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """Where the upstream is and how to talk to it."""

    upstream: str
    """Base URL of the server, with or without the trailing ``/v1``."""
    upstream_model: str | None = None
    """Model name sent upstream (default: the fedgate model, or the upstream's only one)."""
    api_key: str | None = field(default=None, repr=False)
    plain_as_chat: bool = False
    """Send plain prompts to the chat endpoint as one user message."""
    default_max_tokens: int = 256
    """Output budget when a request gives no ``params.max_tokens``."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    """Longest silence from the upstream (time to first token included)."""
    ready_ttl_s: float = 1.0
    """How long a readiness probe's answer is reused."""
    probe_timeout_s: float = 0.5
    """Connect (and answer) timeout of a readiness probe: it runs before each heartbeat."""


def budget(job: Job, default: int) -> int:
    """Tokens still to produce: the whole-output ``max_tokens`` minus the resumed part."""
    value = job.params.get("max_tokens")
    total = (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )
    return total - job.resume_tokens


def pooled(embedding: Any) -> list[float]:
    """A sentence vector: as is, or the mean of per-token vectors (servers without pooling)."""
    if embedding and isinstance(embedding[0], list):
        width = len(embedding[0])
        return [sum(float(row[i]) for row in embedding) / len(embedding) for i in range(width)]
    return [float(v) for v in embedding]


def chat_messages(job: Job, plain_as_chat: bool) -> list[dict[str, Any]] | None:
    """The chat to send, or None for a plain completion."""
    messages = job.params.get("messages")
    if isinstance(messages, list) and messages:
        return list(messages)
    if plain_as_chat:
        return [{"role": "user", "content": job.request.input}]
    return None


class OpenAIBackend:
    """Streams from an OpenAI-compatible HTTP server."""

    def __init__(self, options: OpenAIOptions) -> None:
        self.options = options
        base = options.upstream.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self._session: aiohttp.ClientSession | None = None
        self._ready = True
        self._checked_at = -1e9
        self._active = 0
        self.upstream_models: tuple[str, ...] = ()

    # -- lifecycle and readiness --------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            if self.options.api_key:
                headers["Authorization"] = f"Bearer {self.options.api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.options.connect_timeout_s,
                    sock_read=self.options.read_timeout_s,
                ),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        """False while the upstream cannot be reached (probed at most every ``ready_ttl_s``).

        Reachable means connected and answering: a server too busy to answer within
        ``probe_timeout_s`` is still ready (llama.cpp servers queue ``/v1/models`` behind a
        running generation); refused or unroutable connections, ``503`` (model loading)
        and ``401``/``403`` (a wrong key) are not.
        """
        now = time.monotonic()
        if self._active or now - self._checked_at < self.options.ready_ttl_s:
            # Requests in flight prove the upstream alive (their failures mark it down),
            # and a probe might disturb them: llama_cpp.server interrupts a running
            # generation when another request arrives, unless --interrupt_requests false.
            return self._ready
        self._checked_at = now
        probe = self.options.probe_timeout_s
        try:
            async with self._http().get(
                f"{self.base_url}/v1/models",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=probe, sock_read=probe),
            ) as resp:
                if resp.status == 200:
                    body = _decoder.decode(await resp.read())
                    self.upstream_models = tuple(
                        str(item["id"]) for item in body.get("data", []) if "id" in item
                    )
                self._set_ready(resp.status not in (401, 403, 503))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            log.debug("upstream %s not reachable: %s", self.base_url, exc)
            self._set_ready(False)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError, AttributeError):
            self._set_ready(True)  # connected but busy or odd: alive; requests will tell
        return self._ready

    def upstream_down(self) -> None:
        """A request could not connect: not ready until a probe says otherwise."""
        self._set_ready(False)
        self._checked_at = time.monotonic()

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            log.warning("upstream %s is %s", self.base_url, "back" if ready else "down")
        self._ready = ready

    def model_for(self, model: str) -> str:
        """The upstream model name for a fedgate model id."""
        if self.options.upstream_model:
            return self.options.upstream_model
        known = self.upstream_models
        if known and model not in known and len(known) == 1:
            return known[0]
        return model

    # -- the backend protocol -----------------------------------------------------

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Stream text pieces (generate/code) or one embedding (embed) from the upstream."""
        if not self.upstream_models and self._checked_at < 0:
            await self.ready()  # learn the upstream's model names once
        if job.capability == "embed":
            yield await self._embed(job)
            return
        if job.capability not in ("generate", "code"):
            raise BackendError(
                f"the openai backend does not serve {job.capability!r}", 400, "bad_request"
            )
        remaining = budget(job, self.options.default_max_tokens)
        if remaining <= 0:
            yield Piece(text="", tokens=0, finish_reason="length")
            return
        body: dict[str, Any] = {
            "model": self.model_for(job.model),
            "stream": True,
            "max_tokens": remaining,
        }
        for key in SAMPLING_PARAMS:
            if key in job.params:
                body[key] = job.params[key]
        messages = chat_messages(job, self.options.plain_as_chat)
        if messages is None:
            path, chat = "/v1/completions", False
            body["prompt"] = job.request.input + job.resume_text
        else:
            path, chat = "/v1/chat/completions", True
            if job.resume_text:
                messages.append({"role": "assistant", "content": job.resume_text})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
        async for piece in self._sse(path, body, chat):
            yield piece

    async def _sse(self, path: str, body: dict[str, Any], chat: bool) -> AsyncIterator[Piece]:
        finish: str | None = None
        done = False
        async with self._post(path, body) as resp:
            if resp.status != 200:
                raise _status_error(resp.status, await _error_text(resp))
            try:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, "event:" lines
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = _decoder.decode(data)
                    if "error" in event:
                        raise BackendError(f"upstream error: {_message(event)}", 502, "internal")
                    for choice in event.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content") if chat else None
                        if not chat:
                            text = choice.get("text")
                        if text:
                            yield Piece(text=text, tokens=1)
                        finish = choice.get("finish_reason") or finish
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _transport_error(exc, mid_stream=True) from exc
            except msgspec.DecodeError as exc:
                raise BackendError(f"upstream sent bad JSON: {exc}", 502, "internal") from exc
        if not done and finish is None:
            # Some servers report a failure inside a 200 stream by just ending it.
            raise BackendError("upstream stream ended before it finished", 502, "internal")
        yield Piece(text="", tokens=0, finish_reason=finish or "stop")

    async def _embed(self, job: Job) -> Piece:
        body = {"model": self.model_for(job.model), "input": job.request.input}
        async with self._post("/v1/embeddings", body) as resp:
            if resp.status != 200:
                raise _status_error(resp.status, await _error_text(resp))
            try:
                answer = _decoder.decode(await resp.read())
                vector = pooled(answer["data"][0]["embedding"])
            except (msgspec.DecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
                raise BackendError(f"upstream sent no embedding: {exc}", 502, "internal") from exc
        usage = answer.get("usage") or {}
        tokens = usage.get("prompt_tokens") or len(job.request.input.split()) or 1
        return Piece(text="", tokens=int(tokens), embedding=vector)

    def _post(self, path: str, body: dict[str, Any]) -> _Request:
        return _Request(self, path, _encoder.encode(body))


class _Request:
    """``async with`` one POST, mapping connection failures to contract errors."""

    def __init__(self, backend: OpenAIBackend, path: str, body: bytes) -> None:
        self.backend = backend
        self.url = backend.base_url + path
        self.body = body
        self._ctx: Any = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        backend = self.backend
        self._ctx = backend._http().post(self.url, data=self.body)
        try:
            resp: aiohttp.ClientResponse = await self._ctx.__aenter__()
        except (aiohttp.ClientConnectionError, aiohttp.ClientConnectorError) as exc:
            if not isinstance(exc, aiohttp.ServerTimeoutError):
                backend.upstream_down()
            raise _transport_error(exc, mid_stream=False) from exc
        except TimeoutError as exc:
            raise _transport_error(exc, mid_stream=False) from exc
        backend._active += 1
        return resp

    async def __aexit__(self, *exc: object) -> None:
        self.backend._active -= 1
        await self._ctx.__aexit__(*exc)


def _status_error(status: int, text: str) -> BackendError:
    """An upstream HTTP error status as a contract error."""
    detail = f"upstream {status}: {text[:300]}"
    if status in _BAD_REQUEST:
        return BackendError(detail, 400, "bad_request")
    if status == 429:
        return BackendError(detail, 429, "overloaded")
    if status == 503:
        return BackendError(detail, 503, "node_draining")
    if status in (408, 504):
        return BackendError(detail, 504, "timeout")
    return BackendError(detail, 502, "internal")


def _transport_error(exc: BaseException, *, mid_stream: bool) -> BackendError:
    """A connection failure or timeout as a contract error."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return BackendError(f"upstream timed out: {exc}", 504, "timeout")
    if mid_stream:
        return BackendError(f"upstream connection lost: {exc}", 502, "internal")
    return BackendError(f"upstream unreachable: {exc}", 503, "node_draining")


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    raw = await resp.read()
    try:
        return _message(_decoder.decode(raw))
    except (msgspec.DecodeError, AttributeError, TypeError):
        return raw.decode(errors="replace")


def _message(body: Any) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    if err is not None:
        return str(err)
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
