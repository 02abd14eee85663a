"""Tracing (OpenTelemetry) with W3C ``traceparent`` carried in NATS headers.

Off by default and then free: the hot paths test one module-level flag
(``telemetry.enabled``) before touching any span. Switched on by the standard
variables: ``OTEL_TRACES_EXPORTER`` = ``console`` | ``otlp`` | ``none`` (default
``none``), ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the rest of the
``OTEL_*`` family, which the SDK reads itself. ``otlp`` needs the optional package
``opentelemetry-exporter-otlp-proto-http`` (or ``-grpc``).

Whether or not tracing is on, a gateway forwards the caller's ``traceparent`` and
``tracestate`` to the node and back, so traces cross fedgate even when it records none.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger("fedgate.telemetry")

enabled = False
"""True once a tracer provider with an exporter is installed (checked on hot paths)."""

_tracer: Tracer = trace.get_tracer("fedgate")
_provider: Any = None

CONSUMER = SpanKind.CONSUMER
PRODUCER = SpanKind.PRODUCER
INTERNAL = SpanKind.INTERNAL


def setup(service_name: str, exporter: Any = None) -> bool:
    """Install a tracer provider from the environment (or with ``exporter``, for tests).

    Returns whether tracing is now on. Safe to call more than once: the first provider
    is kept (OpenTelemetry allows one per process) and a later ``exporter`` is added to
    it; setting ``enabled = False`` pauses tracing without tearing the provider down.
    """
    global enabled, _tracer, _provider
    if _provider is not None:
        if exporter is not None:
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            _provider.add_span_processor(SimpleSpanProcessor(exporter))
        enabled = True
        return True
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter is None and choice in ("", "none"):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        span_exporter = _exporter(choice)
        if span_exporter is None:
            return False
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("fedgate")
    enabled = True
    return True


def _exporter(choice: str) -> Any:
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if choice == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning(
                    "OTEL_TRACES_EXPORTER=otlp but no OTLP exporter is installed: "
                    "pip install opentelemetry-exporter-otlp-proto-http; tracing stays off"
                )
                return None
        return OTLPSpanExporter()
    log.warning("unknown OTEL_TRACES_EXPORTER=%r (use console, otlp or none)", choice)
    return None


def start(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: Span | None = None,
    headers: dict[str, str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    """Start a span, child of ``parent`` or of the context in ``headers`` (call only when on)."""
    if parent is not None:
        ctx = trace.set_span_in_context(parent)
    elif headers:
        ctx = propagate.extract(headers)
    else:
        ctx = otel_context.Context()
    return _tracer.start_span(name, context=ctx, kind=kind, attributes=attributes)


def inject(span: Span, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers carrying ``span``'s context as W3C ``traceparent``/``tracestate``."""
    out = dict(headers or {})
    propagate.inject(out, context=trace.set_span_in_context(span))
    return out


def messaging(subject: str, operation: str) -> dict[str, Any]:
    """The OpenTelemetry messaging attributes of a NATS hop."""
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation": operation,
    }


def end_error(span: Span, message: str) -> None:
    """Mark ``span`` failed and end it."""
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, message))
    span.end()
