"""Serving one job on a worker node: run the backend, stream its pieces, answer once.

``JobRunner`` is a mixin of ``worker.node.Node`` (it reads the node's attributes). A
job's answer goes to the dispatch's reply subject, or with a direct reply
(docs/protocol.md, "Direct replies") to the caller itself with a copy of each message
to the gateway first; errors always go to the reply subject. Streams are chunks
(``m.Chunk``, or ``m.DirectChunk`` on a direct reply) numbered from 1, coalesced to one
per ``stream_interval_s`` window when that is set, then a header-only success terminal.
The node's time to first token (ms) and output rate (tokens/s) are smoothed here (an
exponential average, weight 0.2 for the newest job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from shared import errors, telemetry
from shared import headers as h
from shared import messages as m
from worker.backends.assemble import Output
from worker.backends.base import Job

if TYPE_CHECKING:
    from nats.aio.client import Client

    from worker.backends.base import Backend
    from worker.signals import Signals

log = logging.getLogger("fedgate.worker")


class JobRunner:
    """The serving half of a node (mixed into ``worker.node.Node``)."""

    nc: Client
    backend: Backend
    signals: Signals
    node_id: str
    region: str
    draining: bool
    served: int
    stream_interval_s: float
    _gone_prefix: str
    _ttft_ms: float | None
    _tokens_per_s: float | None

    async def _run(
        self,
        job: Job,
        request_id: str,
        attempt: int,
        reply: str,
        timeout_s: float,
        span: Any = None,
        key: str = "",
        direct: m.DirectReply | None = None,
    ) -> None:
        key = key or request_id
        if span is None:
            await self._serve(job, request_id, attempt, reply, timeout_s, key, direct)
            return
        error, tokens = "cancelled", 0
        try:
            error, tokens = await self._serve(
                job, request_id, attempt, reply, timeout_s, key, direct
            )
        finally:
            span.set_attribute("fed.tokens", tokens)
            if self._ttft_ms is not None:
                span.set_attribute("fed.ttft_ms", self._ttft_ms)
            if error:
                telemetry.end_error(span, error)
            else:
                span.end()

    async def _serve(
        self,
        job: Job,
        request_id: str,
        attempt: int,
        reply: str,
        timeout_s: float,
        key: str = "",
        direct: m.DirectReply | None = None,
    ) -> tuple[str, int]:
        """Run one job and answer on ``reply``; returns ("" or the error text, tokens).
        ``key`` names the job on this node (the dispatch's job id, else its request id).
        With ``direct`` (docs/protocol.md, "Direct replies") the chunks and the success
        answer go to the caller itself, a copy of each first to the gateway; errors go to
        ``reply`` either way."""
        started = time.perf_counter()
        streaming = job.request.stream
        gone = f"{self._gone_prefix}.{key or request_id}"
        out = Output(job.resume_tokens)
        coalesce_s = self.stream_interval_s
        to, copy, chunks = reply, "", 0  # chunks: the seq of the last chunk sent
        if direct is not None:
            to, copy, chunks = direct.to, direct.observe, direct.seq_from
        tag = attempt if direct is not None else 0
        produced = False
        ttft_s = 0.0
        flushed = started
        clock = self.signals.clock(started)
        try:
            async with asyncio.timeout(timeout_s):
                async for piece in self.backend.stream(job):
                    if not out.add(piece):
                        continue
                    if piece.embedding is None:
                        clock.output(piece.tokens)
                    if not produced:
                        produced = True
                        ttft_s = time.perf_counter() - started
                        self._note_ttft(ttft_s)
                    if not streaming:
                        continue
                    now = time.perf_counter()
                    if coalesce_s and now - flushed < coalesce_s:
                        continue  # coalescing: gather pieces, one chunk per window
                    chunks += 1
                    await self._chunk(to, gone, chunks, out, copy, tag)
                    flushed = now
                if streaming and out.pending:
                    chunks += 1
                    await self._chunk(to, gone, chunks, out, copy, tag)
                if streaming and out.embedding is not None:
                    raise errors.BadRequest("embeddings do not stream; send stream: false")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                stopped = errors.NodeDraining if self.draining else errors.Cancelled
                await self._error(reply, stopped(f"stopped on {self.node_id}"))
            raise
        except TimeoutError:
            await self._error(reply, errors.Timeout(detail=f"deadline passed on {self.node_id}"))
            return "timeout", out.tokens
        except errors.FedError as exc:
            await self._error(reply, exc)
            return exc.message, out.tokens
        except Exception as exc:
            log.exception("backend failed on %s", request_id)
            await self._error(reply, errors.Internal(f"backend error: {exc}"))
            return f"backend error: {exc}", out.tokens
        elapsed = time.perf_counter() - started
        self.served += 1
        tokens = out.total()
        if produced and elapsed > 0:
            self._note_rate((tokens - job.resume_tokens) / elapsed)
        if streaming:
            headers = {
                h.STATUS: "ok",
                h.SERVED_BY: self.node_id,
                h.TOKENS: str(tokens),
                h.FINISH_REASON: out.finish_reason(),
            }
            if out.prompt_tokens is not None:
                headers[h.PROMPT_TOKENS] = str(out.prompt_tokens)
            if direct is None:
                await self.nc.publish(reply, b"", headers=headers)
            else:
                headers = {**direct.headers, **headers}
                await self.nc.publish(copy, b"", headers=headers)
                await self.nc.publish(to, b"", headers=headers)
        else:
            text, calls, logprobs = out.take_all()
            result = m.Result(
                request_id=request_id,
                model=job.model,
                output=job.resume_text + text,
                served_by=self.node_id,
                region=self.region,
                tokens=tokens,
                latency_ms=round(elapsed * 1000, 3),
                attempt=attempt,
                embedding=out.embedding,
                finish_reason=out.finish_reason(),
                prompt_tokens=out.prompt_tokens,
                tool_calls=calls,
                logprobs=logprobs,
                ttft_ms=round(ttft_s * 1000, 3) if produced and out.embedding is None else None,
            )
            # No headers to the gateway: it reads ``tokens`` from the body (decoding a small
            # JSON is cheaper for it than parsing a header block).
            data = m.encode(result)
            if direct is None:
                await self.nc.publish(reply, data, reply=gone)
            else:
                await self.nc.publish(copy, data)
                hdrs = {**direct.headers, h.SERVED_BY: self.node_id}
                await self.nc.publish(to, data, headers=hdrs)
        return "", tokens

    async def _chunk(
        self, reply: str, gone: str, seq: int, out: Output, copy: str = "", attempt: int = 0
    ) -> None:
        """One chunk to ``reply`` (and first a copy to ``copy``, a direct reply's)."""
        text, tokens, calls, logprobs = out.take()
        if not copy:
            chunk = m.Chunk(seq=seq, text=text, tokens=tokens, tool_calls=calls, logprobs=logprobs)
            await self.nc.publish(reply, m.encode(chunk), reply=gone)
            return
        data = m.encode(
            m.DirectChunk(
                seq=seq, text=text, tokens=tokens, tool_calls=calls, logprobs=logprobs,
                attempt=attempt,
            )
        )  # fmt: skip
        await self.nc.publish(copy, data)
        await self.nc.publish(reply, data, reply=gone)

    async def _error(self, reply: str, error: errors.FedError) -> None:
        """Answer ``error`` (its contract headers, ``Retry-After`` included) as this node."""
        await self.nc.publish(reply, b"", headers={**error.headers(), h.SERVED_BY: self.node_id})

    def _note_ttft(self, seconds: float) -> None:
        ms = seconds * 1000
        self._ttft_ms = ms if self._ttft_ms is None else round(0.8 * self._ttft_ms + 0.2 * ms, 3)

    def _note_rate(self, tokens_per_s: float) -> None:
        prev = self._tokens_per_s
        self._tokens_per_s = (
            tokens_per_s if prev is None else round(0.8 * prev + 0.2 * tokens_per_s, 3)
        )
