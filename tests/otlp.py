"""An OTLP/HTTP trace receiver for tests: decodes the real protobuf payloads services export."""

from __future__ import annotations

import anyio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Span = tuple[str, trace_pb2.Span]
"""(service.name, span)"""


class Receiver:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.region_of: dict[bytes, str] = {}
        """span id -> the exporting process's `cloud.region`"""
        self.arrived = anyio.Event()

    async def traces(self, request: Request) -> Response:
        export = trace_service_pb2.ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((resource.get("service.name", ""), span))
                    self.region_of[span.span_id] = resource.get("cloud.region", "")
        self.arrived.set()
        self.arrived = anyio.Event()
        return Response(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    async def wait_for(self, name: str, timeout: float = 20) -> Span:
        with anyio.fail_after(timeout):
            while True:
                found = [s for s in self.spans if s[1].name == name]
                if found:
                    return found[-1]
                await self.arrived.wait()

    def chain_below(self, top: trace_pb2.Span) -> list[Span]:
        """Every span of top's trace, parents before children."""
        return [s for s in self.spans if s[1].trace_id == top.trace_id]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])


def child_of(spans: list[Span], parent: trace_pb2.Span, kind: int, service: str) -> trace_pb2.Span:
    matches = [s for svc, s in spans if s.parent_span_id == parent.span_id and s.kind == kind and svc == service]
    assert len(matches) == 1, f"expected one {service} child of kind {kind} under {parent.name}, got {matches}"
    return matches[0]


_KINDS = {
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
}


def tree(receiver: Receiver, top: trace_pb2.Span) -> str:
    """The trace below `top` as indented text (as docs/observability.md shows it)."""
    spans = receiver.chain_below(top)
    lines = [f"trace {top.trace_id.hex()}"]

    def walk(span: trace_pb2.Span, service: str, depth: int) -> None:
        ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
        region = receiver.region_of.get(span.span_id, "")
        events = "".join(f" !{e.name}" for e in span.events)
        lines.append(f"{'  ' * depth}{span.name}  [{_KINDS[span.kind]}, {service} {region}, {ms:.2f} ms]{events}")
        for svc, child in sorted(spans, key=lambda s: s[1].start_time_unix_nano):
            if child.parent_span_id == span.span_id:
                walk(child, svc, depth + 1)

    walk(top, next(svc for svc, s in spans if s.span_id == top.span_id), 0)
    return "\n".join(lines)
