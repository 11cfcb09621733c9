"""Traces from real processes (edge, manager, adapter) exported by OTLP/HTTP to a receiver this test runs.

The receiver decodes the real protobuf payloads. For a successful call, a backing-server
error and a timeout it asserts one trace with the chain
edge SERVER -> edge PRODUCER -> adapter CONSUMER -> adapter CLIENT (the backing hop).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from conftest import python_server
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.ops_http import bind, serve_asgi
from mcp import Client
from mcp.shared.exceptions import MCPError
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp import Receiver, child_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.terminate()
        p.wait(20)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_one_trace_per_call_across_real_processes(
    nats_server: NatsServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    receiver = Receiver()
    sock = bind("127.0.0.1", 0)
    stop = anyio.Event()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sock.getsockname()[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    port = free_port()
    server_json = msgspec.json.encode(python_server("probe_server.py")).decode()
    cli = [sys.executable, "-m", "fedmcp.cli.main"]
    nats = ["--nats-url", nats_server.url]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_asgi(receiver.app(), sock, stop=stop))
        for args, log in (
            ([*cli, "manager", *nats], "manager.log"),
            ([*cli, "adapter", *nats, "--name", "probe", "--server-json", server_json], "adapter.log"),
            ([*cli, "edge", *nats, "--anonymous", "--port", str(port), "--request-timeout", "1"], "edge.log"),
        ):
            procs.append(start(args, env, tmp_path / log))
        url = f"http://127.0.0.1:{port}/mcp"
        with anyio.fail_after(30):
            while True:  # the three processes start independently
                try:
                    async with Client(url) as client:
                        if "probe_pid" in {t.name for t in (await client.list_tools()).tools}:
                            break
                except Exception:
                    pass
                await anyio.sleep(0.2)
        async with Client(url) as client:
            await client.call_tool("probe_pid", {})
            failed = await client.call_tool("probe_fail", {"reason": "boom"})
            assert failed.is_error
            with pytest.raises(MCPError) as err:
                await client.call_tool("probe_sleep", {"seconds": 5})
            assert err.value.error.code == jsonrpc.UPSTREAM_TIMEOUT
        async with Client(url, mode="legacy") as legacy:  # a handshake-era session has an id
            await legacy.call_tool("probe_env", {"name": "HOME"})
        _, legacy_span = await receiver.wait_for("tools/call probe_env")
        legacy_attributes = {a.key: a.value.string_value for a in legacy_span.attributes}
        assert len(legacy_attributes["mcp.session.id"]) >= 16
        assert legacy_attributes["mcp.protocol.version"] == "2025-11-25"
        assert legacy_attributes["network.transport"] == "tcp"

        for tool, backing_name, error in (
            ("probe_pid", "MCP send tools/call pid", None),
            ("probe_fail", "MCP send tools/call fail", "tool_error"),
            ("probe_sleep", "MCP send tools/call sleep", str(jsonrpc.UPSTREAM_TIMEOUT)),
        ):
            service, server_span = await receiver.wait_for(f"tools/call {tool}")
            assert service == "fedmcp-edge"
            assert server_span.kind == trace_pb2.Span.SPAN_KIND_SERVER
            await receiver.wait_for(backing_name)
            spans = receiver.chain_below(server_span)
            producer = child_of(spans, server_span, trace_pb2.Span.SPAN_KIND_PRODUCER, "fedmcp-edge")
            consumer = child_of(spans, producer, trace_pb2.Span.SPAN_KIND_CONSUMER, "fedmcp-adapter")
            backing = child_of(spans, consumer, trace_pb2.Span.SPAN_KIND_CLIENT, "fedmcp-adapter")
            assert backing.name == backing_name
            attributes = {a.key: a.value.string_value or a.value.int_value for a in server_span.attributes}
            assert attributes.get("gen_ai.tool.name") == tool
            if error is not None:
                assert str(attributes.get("error.type")) == error
        stop.set()
