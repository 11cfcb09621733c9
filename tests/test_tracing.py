"""One trace from the client through edge, NATS and adapter to the backing hop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import demo_server, federation
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.anyio
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # A tracer provider can be installed once per process; the exporter is cleared per test.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def parent_of(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> ReadableSpan | None:
    return by_id.get(span.parent.span_id) if span.parent else None


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_one_trace_client_edge_bus_adapter_backend(
    nats_server: NatsServer, spans: InMemorySpanExporter, mode: str
) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        spans.clear()
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            await client.call_tool("demo_add", {"a": 1, "b": 2})
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    client_span = next(s for s in finished if s.kind == SpanKind.CLIENT and s.name == "MCP send tools/call demo_add")
    server_span = next(s for s in finished if s.kind == SpanKind.SERVER and s.name == "tools/call demo_add")
    producer = next(s for s in finished if s.kind == SpanKind.PRODUCER)
    consumer = next(s for s in finished if s.kind == SpanKind.CONSUMER)
    backing = next(s for s in finished if s.kind == SpanKind.CLIENT and s.name == "MCP send tools/call add")
    chain = [client_span, server_span, producer, consumer, backing]
    assert len({s.context.trace_id for s in chain}) == 1
    assert parent_of(server_span, by_id) is client_span
    assert parent_of(producer, by_id) is server_span
    assert parent_of(consumer, by_id) is producer
    assert parent_of(backing, by_id) is consumer
    assert producer.name == "send {prefix}.rpc.{server}"  # a template, never a server name or id
    assert producer.attributes and producer.attributes["messaging.system"] == "nats"
