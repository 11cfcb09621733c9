"""The services as separate OS processes joined only by NATS, and `fedmcp up` as a user runs it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio
import httpx2
import msgspec
import pytest
from conftest import demo_server
from fedmcp.shared import headers, jsonrpc
from fedmcp.shared.natsserver import NatsServer, free_port
from mcp import Client, StdioServerParameters
from procs import Proc, fedmcp, metric, wait_for_tools

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent


async def test_three_separate_processes_both_eras_both_transports(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path
) -> None:
    port, manager_port, adapter_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    server_json = msgspec.json.encode(demo_server()).decode()
    procs.append(
        Proc(
            fedmcp("manager", "--nats-url", nats_server.url, "--http-port", str(manager_port)), tmp_path / "manager.log"
        )
    )
    adapter_args = ["--name", "demo", "--server-json", server_json, "--http-port", str(adapter_port)]
    procs.append(Proc(fedmcp("adapter", "--nats-url", nats_server.url, *adapter_args), tmp_path / "adapter.log"))
    procs.append(
        Proc(fedmcp("edge", "--nats-url", nats_server.url, "--anonymous", "--port", str(port)), tmp_path / "edge.log")
    )
    await wait_for_tools(url, {"demo_add"})
    for mode in ("legacy", "2026-07-28"):
        async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("demo_add", {"a": 20, "b": 22})
            assert result.structured_content == {"result": 42}
    stdio = StdioServerParameters(
        command=sys.executable, args=fedmcp("edge", "--stdio", "--nats-url", nats_server.url)[1:]
    )
    for mode in ("legacy", "2026-07-28"):
        async with Client(stdio, mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("demo_echo", {"text": mode})
            assert result.structured_content == {"result": mode}
    # Every service reports health and the load it carried.
    async with httpx2.AsyncClient(timeout=10) as http:
        for ops_port in (port, manager_port, adapter_port):
            assert (await http.get(f"http://127.0.0.1:{ops_port}/healthz")).status_code == 200
            assert (await http.get(f"http://127.0.0.1:{ops_port}/readyz")).json()["ready"] is True
        edge_metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        adapter_metrics = (await http.get(f"http://127.0.0.1:{adapter_port}/metrics")).text
        manager_metrics = (await http.get(f"http://127.0.0.1:{manager_port}/metrics")).text
    assert (
        metric(edge_metrics, "mcp_server_operation_duration_seconds_count", server="demo", tool="add", outcome="ok")
        == 2
    )
    assert (
        metric(adapter_metrics, "mcp_client_operation_duration_seconds_count", method="tools/call", outcome="ok") == 4
    )
    assert metric(adapter_metrics, "fedmcp_adapter_pool_size", server="demo") == 1
    assert metric(manager_metrics, "fedmcp_registry_instances", server="demo") == 1
    # SIGTERM drains each service and exits cleanly.
    assert [p.stop() for p in reversed(procs)] == [0, 0, 0]


async def test_unknown_bus_protocol_version_gets_a_clear_error(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path
) -> None:
    import nats

    server_json = msgspec.json.encode(demo_server()).decode()
    procs.append(
        Proc(
            fedmcp("adapter", "--nats-url", nats_server.url, "--name", "demo", "--server-json", server_json),
            tmp_path / "adapter.log",
        )
    )
    nc = await nats.connect(nats_server.url)
    try:
        request = jsonrpc.encode_request("tools/list", None, 1)
        with anyio.fail_after(30):
            while True:
                try:
                    reply = await nc.request("fedmcp.rpc.demo", request, timeout=2, headers={headers.BUS: "99"})
                    break
                except Exception:  # no responders until the adapter subscribed
                    await anyio.sleep(0.1)
        body = json.loads(reply.data)
        assert body["error"]["code"] == jsonrpc.BUS_PROTOCOL_MISMATCH
        assert "99" in body["error"]["message"]
        # The adapter keeps serving requests in its own protocol version.
        ok = await nc.request(
            "fedmcp.rpc.demo", request, timeout=10, headers=headers.base({headers.DEADLINE: headers.deadline_in(10)})
        )
        assert ok.headers and ok.headers.get(headers.KIND) == headers.Kind.ACCEPT
    finally:
        await nc.close()


async def test_fedmcp_up_serves_the_example_config_within_10s(procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    config = (ROOT / "fedmcp.toml").read_text().replace("port = 8765", f"port = {port}")
    (tmp_path / "fedmcp.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n' + config)
    started = anyio.current_time()
    proc = Proc(fedmcp("up", "--config", str(tmp_path / "fedmcp.toml")), tmp_path / "up.log", cwd=tmp_path)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}/mcp"
    await wait_for_tools(url, {"time_get_current_time", "demo_add"}, timeout=10)
    async with Client(url) as client:
        result = await client.call_tool("time_get_current_time", {"timezone": "Europe/Paris"})
        assert not result.is_error
        assert "Europe/Paris" in json.dumps(result.structured_content)
    assert anyio.current_time() - started < 10
    log = (tmp_path / "up.log").read_text()
    assert re.search(r"fedmcp is up: MCP endpoint http://127\.0\.0\.1:\d+/mcp", log)
    assert proc.stop() == 0
    assert "fedmcp stopped" in (tmp_path / "up.log").read_text()
