"""Tracing: the standard `OTEL_*` environment configures export; trace context crosses NATS in headers.

With no exporter configured nothing is installed and every span is a no-op.
`OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable) turns on OTLP,
over HTTP/protobuf by default or gRPC when `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
The bus hop follows the OpenTelemetry messaging conventions with
`messaging.system = nats` and the subject *template* as destination, so span
names never carry server names or ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

from fedmcp.shared.headers import TRACEPARENT
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind

tracer = trace.get_tracer("fedmcp")


_PROVIDER_FROM_ENV = OTEL_PYTHON_TRACER_PROVIDER in os.environ


def recording() -> bool:
    """Whether a tracer provider is installed (else every span is a no-op and the hot paths make none;
    trace context still passes through, so a trace continues across a hop that records nothing)."""
    # Asked several times per call: the installed provider is read directly, because
    # `get_tracer_provider()` looks up an environment variable on every call until one is set.
    provider = trace._TRACER_PROVIDER
    if provider is None and not _PROVIDER_FROM_ENV:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


RPC_TEMPLATE = "{prefix}.rpc.{server}"


def _exporter() -> SpanExporter | None:
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def configure(service: str, *, region: str = "local", instance: str = "") -> TracerProvider | None:
    """Install a tracer provider exporting by OTLP when the environment asks for one."""
    exporter = _exporter()
    if exporter is None:
        return None
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", f"fedmcp-{service}"),
            "service.instance.id": instance,
            "cloud.region": region,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def inject(headers: dict[str, str]) -> None:
    """Write the current trace context (W3C traceparent/tracestate, baggage) into NATS headers."""
    current = context.get_current()
    if not current:  # nothing attached (no span, no baggage): the common call, checked in one step
        return
    if trace.get_current_span(current).get_span_context().is_valid or baggage.get_all(current):
        propagate.inject(headers, context=current)


def _messaging(operation: str, destination: str, server: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.destination.name": destination,
        "fedmcp.server": server,
    }


NO_SPAN = nullcontext(trace.INVALID_SPAN)
"""What the per-call paths enter when there is no span to make and no context to carry: one reusable
context manager instead of a generator per call."""


def producer(destination: str, server: str) -> AbstractContextManager[Span]:
    if not recording():
        return NO_SPAN
    attributes = _messaging("send", destination, server)
    return tracer.start_as_current_span(f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes)


def consumer(headers: Mapping[str, str] | None, destination: str, server: str) -> AbstractContextManager[Span]:
    """A span continuing the sender's trace (made current, not copied, so SDK spans nest under it)."""
    # Nothing to continue without a traceparent (baggage travels only with one): skip the propagators.
    parent = propagate.extract(dict(headers)) if headers is not None and TRACEPARENT in headers else None
    if not recording():
        return NO_SPAN if parent is None else Attached(parent)
    return _consumer(parent, destination, server)


@contextmanager
def _consumer(parent: context.Context | None, destination: str, server: str) -> Iterator[Span]:
    with NO_SPAN if parent is None else Attached(parent):
        attributes = _messaging("process", destination, server)
        with tracer.start_as_current_span(
            f"process {destination}", kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span


class Attached:
    """`context` made current for a block, which gets no span of its own (what carries a trace on
    across a hop that records none)."""

    __slots__ = ("context", "token")

    def __init__(self, ctx: context.Context) -> None:
        self.context = ctx
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = context.attach(self.context)
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        context.detach(self.token)  # type: ignore[arg-type]


def event(name: str, attributes: Mapping[str, str]) -> None:
    """A span event on the current span (retries, failovers, era translation, consent)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, dict(attributes))
