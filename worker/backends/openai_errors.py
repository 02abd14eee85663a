"""What an OpenAI-compatible upstream's failures mean for the federation (one boundary).

The openai backend talks to its upstream through the ``openai`` SDK; every exception the
SDK raises is mapped here onto the contract's errors (``shared.errors``), whose class
says whether the gateway tries another node and whether it blames this one:

    upstream answer                        node sends               gateway
    400, 413, 422                          400 bad_request          to the caller, no retry
    401, 403 (wrong key), 404 (no such     503 node_unavailable     blames the node at once,
      model or endpoint), other 4xx                                 tries another
    408, our read timeout                  504 timeout              tries another
    429, or 503 with Retry-After           429 overloaded           leaves it alone Retry-After
                                             (+ Retry-After)          seconds, tries another
    5xx, refused, cut or broken reply      502 upstream_error       tries another; the same on
                                                                    2 nodes in a row = poison

A connection that cannot be opened also marks the upstream down (``on_unreachable``):
the node heartbeats ``draining`` until a readiness probe finds it back.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai

from shared import errors

BAD_REQUEST = frozenset({400, 413, 422})
"""Upstream statuses that mean the caller's request is at fault."""


def retry_after_s(headers: httpx2.Headers) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date), or None."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def from_status(status: int, detail: str, headers: httpx2.Headers) -> errors.FedError:
    """An upstream HTTP error status as a contract error."""
    text = f"upstream {status}: {detail[:300]}"
    wait = retry_after_s(headers)
    if status in BAD_REQUEST:
        return errors.BadRequest(text)
    if status == 429 or (status == 503 and wait is not None):
        return errors.Overloaded(text, retry_after_s=wait)
    if status == 408:
        return errors.Timeout(detail=text)
    if status < 500:  # 401/403 a wrong key, 404 a model or endpoint it does not have
        return errors.NodeUnavailable(f"{text} (is the node configured right?)")
    return errors.UpstreamError(text)


def from_sdk(
    exc: BaseException, *, read_timeout_s: float, on_unreachable: Callable[[], None]
) -> errors.FedError:
    """Any failure of an SDK call (or of reading its stream) as a contract error."""
    if isinstance(exc, errors.FedError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return from_status(exc.status_code, message_of(exc.body, exc.message), exc.response.headers)
    cause = exc.__cause__
    if isinstance(exc, openai.APITimeoutError):
        if isinstance(cause, httpx2.ConnectTimeout | httpx2.PoolTimeout):
            on_unreachable()
            return errors.UpstreamError(f"upstream unreachable: connect timed out ({cause!r})")
        return errors.Timeout(read_timeout_s, detail=f"upstream silent for {read_timeout_s:g}s")
    if isinstance(exc, openai.APIConnectionError):
        if isinstance(cause, httpx2.ConnectError):
            on_unreachable()
            return errors.UpstreamError(f"upstream unreachable: {cause}")
        return errors.UpstreamError(f"upstream connection lost: {cause or exc}")
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
        return errors.UpstreamError(f"upstream error: {message_of(exc.body, exc.message)}")
    if isinstance(exc, ValueError):  # an event that is not JSON
        return errors.UpstreamError(f"upstream sent a broken reply: {exc}")
    return errors.UpstreamError(f"upstream failed: {exc!r}")


def message_of(body: Any, default: str = "") -> str:
    """The message of an OpenAI-style error body (``{"error": {"message"}}`` or alike)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or default or err)
        return str(err)
    return default if body is None else str(body)
