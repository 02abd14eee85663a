"""What an OpenAI-compatible upstream's failures mean for the federation (one boundary).

The openai backend talks to its upstream with ``aiohttp``; a non-200 answer
(``StatusError``), an error event inside a 200 stream (``stream_error``) and every
exception of the client or of reading its stream are mapped here onto the contract's
errors (``shared.errors``), whose class says whether the gateway tries another node and
whether it blames this one:

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
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from shared import errors

BAD_REQUEST = frozenset({400, 413, 422})
"""Upstream statuses that mean the caller's request is at fault."""


class StatusError(Exception):
    """An upstream's answer other than 200 (the cause of the contract error it maps to)."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.detail = status_detail(status, body)
        self.headers = headers
        super().__init__(f"upstream {status}: {self.detail[:300]}")


def status_detail(status: int, body: bytes) -> str:
    """The message of an error answer's body (its ``error.message`` when it is JSON),
    worded as the ``openai`` SDK worded it."""
    text = body.decode("utf-8", "replace").strip()
    default = f"Error code: {status}"
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text
    err = data.get("error", data) if isinstance(data, dict) else data
    message = err.get("message") if isinstance(err, dict) else None
    if isinstance(message, str) and message:
        default += f" - {message}"
    return message_of(err, default)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date), or None (any header mapping;
    names compared case-insensitively)."""
    value = headers.get("retry-after") or next(
        (v for k, v in headers.items() if k.lower() == "retry-after"), ""
    )
    value = value.strip()
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


def from_status(status: int, detail: str, headers: Mapping[str, str]) -> errors.FedError:
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


def stream_error(event: Any) -> errors.FedError | None:
    """The error an event of a 200 stream reports (``{"error": ...}``), or None."""
    if not isinstance(event, dict) or not event.get("error"):
        return None
    body = event["error"]
    message = body.get("message") if isinstance(body, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return errors.UpstreamError(f"upstream error: {message_of(body, message)}")


def from_client(
    exc: BaseException, *, read_timeout_s: float, on_unreachable: Callable[[], None]
) -> errors.FedError:
    """Any failure of a request (or of reading its stream) as a contract error."""
    if isinstance(exc, errors.FedError):
        return exc
    if isinstance(exc, StatusError):
        return from_status(exc.status, exc.detail, exc.headers)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or waiting for the pool
        on_unreachable()
        return errors.UpstreamError(f"upstream unreachable: connect timed out ({exc!r})")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return errors.Timeout(read_timeout_s, detail=f"upstream silent for {read_timeout_s:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, no such host, TLS
        on_unreachable()
        return errors.UpstreamError(f"upstream unreachable: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return errors.UpstreamError(f"upstream connection lost: {exc!r}")
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
