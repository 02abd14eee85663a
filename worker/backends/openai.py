"""A backend for any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, ...).

It speaks to the upstream with one pooled ``aiohttp`` session (its C HTTP parser), the
streams read by ``openai_wire.SSEParser`` (every valid SSE framing: CRLF, multi-line
``data``, comments, no space after the colon) and decoded with msgspec: the data plane
relays every token, so it stays lean (the ``openai`` SDK on httpx spent ~4x the CPU
per streamed chunk). ``generate``/``code`` always stream from the upstream (a
non-streaming request is the same stream collected by the node), asking for usage with
``stream_options.include_usage``:

- a request whose ``params.messages`` holds a chat (what the gateway's HTTP front door
  sends for ``/v1/chat/completions``) goes to ``/v1/chat/completions``, messages as sent
  (``tool_calls``, ``tool_call_id``, content parts untouched);
- a plain prompt goes to ``/v1/completions`` (raw continuation), or, with
  ``plain_as_chat``, to ``/v1/chat/completions`` as one user message.

``embed`` asks ``/v1/embeddings``. Every other key of ``params`` (``tools``,
``tool_choice``, ``response_format``, ``logprobs``, penalties, ``seed``, ``stop``,
``user``, ...) is copied onto the upstream request as it is: the upstream accepts it or
answers 400, which reaches the caller. Tool-call deltas, log-probabilities and the
upstream's usage come back on the pieces.

Resume (mid-stream failover): a completion continues after ``input + resume_text``; a
chat gets the partial answer as a final assistant message with
``continue_final_message`` (vLLM; llama.cpp and Ollama continue a final assistant
message on their own). ``max_tokens`` counts the whole output, so the upstream is asked
for ``max_tokens - resume_tokens``. Upstream failures map onto the contract in
``openai_errors``.

``ready()`` asks ``/v1/models`` on a fresh connection (cached for ``ready_ttl_s``) so the
node advertises itself as draining while its upstream is down. The wire format
(request bodies, streamed events) is ``openai_wire``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from shared import errors
from worker.backends import openai_errors
from worker.backends.base import Job, Piece
from worker.backends.openai_errors import StatusError, stream_error
from worker.backends.openai_http import (
    OpenAIOptions,
    drain,
    encode,
    pooled_session,
    probe_session,
)
from worker.backends.openai_wire import (
    RESERVED,
    SSEParser,
    budget,
    chat_messages,
    choice_piece,
    json_of,
    pooled,
    usage_count,
)

__all__ = ["RESERVED", "OpenAIBackend", "OpenAIOptions", "budget", "chat_messages", "pooled"]

log = logging.getLogger("fedgate.worker.openai")


class OpenAIBackend:
    """Streams from an OpenAI-compatible HTTP server."""

    def __init__(self, options: OpenAIOptions) -> None:
        self.options = options
        base = options.upstream.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self._v1 = f"{self.base_url}/v1"
        self._http: aiohttp.ClientSession | None = None
        """The pooled session of requests (created in the event loop, at first use)."""
        self._probe_http: aiohttp.ClientSession | None = None
        """The readiness probes' session: a fresh connection each time."""
        self._ready = True
        self._checked_at = -1e9
        self._active = 0
        self._chat_only = False
        """Set when the upstream has no /v1/completions: plain prompts go to chat."""
        self.upstream_models: tuple[str, ...] = ()

    @property
    def metrics_url(self) -> str:
        """Where the upstream's Prometheus metrics would be (vLLM, SGLang, llama.cpp's
        server with ``--metrics``): the default the node reads its engine signals from."""
        return f"{self.base_url}/metrics"

    # -- lifecycle and readiness --------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = pooled_session(self.options)
        return self._http

    def _probes(self) -> aiohttp.ClientSession:
        if self._probe_http is None:
            self._probe_http = probe_session(self.options)
        return self._probe_http

    async def close(self) -> None:
        """Close the HTTP sessions (idempotent)."""
        sessions = (self._http, self._probe_http)
        self._http = self._probe_http = None
        for session in sessions:
            if session is not None:
                await session.close()

    async def ready(self) -> bool:
        """False while the upstream does not answer ``GET /v1/models`` with a 200.

        Each probe opens a fresh connection (a kept-alive one the upstream dropped proves
        nothing) at most every ``ready_ttl_s``. Refused, reset, ``401``/``403`` (a wrong
        key), ``503`` (loading) or any other non-200 answer is not ready; a server that
        accepted the connection but is too busy to answer within ``probe_timeout_s``
        (llama.cpp queues ``/v1/models`` behind a running generation) keeps its state.
        """
        now = time.monotonic()
        if self._active or now - self._checked_at < self.options.ready_ttl_s:
            # Requests in flight prove the upstream alive (their failures mark it down),
            # and a probe might disturb them: llama_cpp.server interrupts a running
            # generation when another request arrives, unless --interrupt_requests false.
            return self._ready
        self._checked_at = now
        try:
            async with self._probes().get(f"{self._v1}/models") as resp:
                if resp.status != 200:
                    log.debug("upstream %s answers /v1/models with %d", self.base_url, resp.status)
                    self._set_ready(False)
                    return self._ready
                data = json_of(await resp.read()).get("data")
            models = tuple(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
        except aiohttp.SocketTimeoutError:
            return self._ready  # connected, busy: not a verdict either way
        except (aiohttp.ClientError, ValueError, AttributeError, TypeError) as exc:
            log.debug("upstream %s not ready: %r", self.base_url, exc)
            self._set_ready(False)
            return self._ready
        self.upstream_models = models
        self._set_ready(True)
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

    def _error(self, exc: BaseException) -> errors.FedError:
        return openai_errors.from_client(
            exc, read_timeout_s=self.options.read_timeout_s, on_unreachable=self.upstream_down
        )

    # -- the backend protocol -----------------------------------------------------

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Stream pieces (generate/code) or one embedding (embed) from the upstream."""
        if not self.upstream_models and self._checked_at < 0:
            await self.ready()  # learn the upstream's model names once
        if job.capability == "embed":
            yield await self._embed(job)
            return
        if job.capability not in ("generate", "code"):
            raise errors.BadRequest(f"the openai backend does not serve {job.capability!r}")
        if job.params.get("n") not in (None, 1):
            raise errors.BadRequest("n must be 1 (one choice per request)")
        remaining = budget(job, self.options.default_max_tokens)
        if remaining <= 0:
            yield Piece(text="", tokens=0, finish_reason="length")
            return
        body = {k: v for k, v in job.params.items() if k not in RESERVED}
        body["model"] = self.model_for(job.model)
        body["stream"] = True
        if self.options.stream_usage:
            body["stream_options"] = {"include_usage": True}
        budget_key = (
            "max_completion_tokens" if "max_completion_tokens" in job.params else "max_tokens"
        )
        body[budget_key] = remaining
        messages = chat_messages(job, self.options.plain_as_chat or self._chat_only)
        if messages is None:
            body["prompt"] = job.prompt + job.resume_text
            produced = False
            try:
                async for piece in self._events("/completions", body, False, job.resume_tokens):
                    produced = True
                    yield piece
                return
            except errors.NodeUnavailable as exc:
                cause = exc.__cause__
                if produced or not (isinstance(cause, StatusError) and cause.status == 404):
                    raise
            # A chat-only server (no /v1/completions, e.g. a hosted chat model): send
            # plain prompts as one user message from now on, as --plain-as-chat does.
            log.warning("%s has no /v1/completions: plain prompts go to chat", self.base_url)
            self._chat_only = True
            del body["prompt"]
            messages = chat_messages(job, True) or []
        if job.resume_text:
            messages.append({"role": "assistant", "content": job.resume_text})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body["messages"] = messages
        async for piece in self._events("/chat/completions", body, True, job.resume_tokens):
            yield piece

    async def _events(
        self, path: str, body: dict[str, Any], chat: bool, resumed: int
    ) -> AsyncIterator[Piece]:
        finish: str | None = None
        usage: dict[str, Any] = {}
        done = False
        self._active += 1
        try:
            async with self._session().post(self._v1 + path, data=encode(body)) as resp:
                if resp.status // 100 != 2:
                    raise StatusError(resp.status, await resp.read(), resp.headers)
                sse = SSEParser()
                async for chunk in resp.content.iter_any():
                    for data in sse.feed(chunk):
                        if data.startswith(b"[DONE]"):
                            done = True
                            break
                        event = json_of(data)
                        if (failed := stream_error(event)) is not None:
                            raise failed
                        if not isinstance(event, dict):
                            raise errors.UpstreamError(
                                f"upstream sent a non-object event: {event!r}"
                            )
                        if isinstance(event.get("usage"), dict):
                            usage = event["usage"]
                        for choice in event.get("choices") or ():
                            piece = choice_piece(choice, chat)
                            if piece is not None:
                                yield piece
                            finish = choice.get("finish_reason") or finish
                    if done:
                        await drain(resp)
                        break
        except (aiohttp.ClientError, StatusError, ValueError) as exc:
            raise self._error(exc) from exc
        finally:
            self._active -= 1
        if finish is None:
            # Some servers report a failure inside a 200 stream by just ending it.
            raise errors.UpstreamError("upstream stream ended before it finished")
        yield Piece(
            text="",
            tokens=0,
            finish_reason=finish,
            prompt_tokens=usage_count(usage, "prompt_tokens", minus=resumed),
            completion_tokens=usage_count(usage, "completion_tokens"),
        )

    async def _embed(self, job: Job) -> Piece:
        body = {k: v for k, v in job.params.items() if k not in RESERVED}
        body.pop("encoding_format", None)  # the node always answers floats
        body["model"] = self.model_for(job.model)
        body["input"] = job.prompt
        self._active += 1
        try:
            async with self._session().post(f"{self._v1}/embeddings", data=encode(body)) as resp:
                raw = await resp.read()
                if resp.status // 100 != 2:
                    raise StatusError(resp.status, raw, resp.headers)
        except (aiohttp.ClientError, StatusError) as exc:
            raise self._error(exc) from exc
        finally:
            self._active -= 1
        try:
            answer: Any = json_of(raw)
            vector = pooled(answer["data"][0]["embedding"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise errors.UpstreamError(f"upstream sent no embedding: {exc!r}") from exc
        usage = answer.get("usage") or {}
        tokens = usage_count(usage, "prompt_tokens") or len(job.prompt.split()) or 1
        return Piece(text="", tokens=tokens, embedding=vector, prompt_tokens=tokens)
