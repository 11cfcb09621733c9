"""The deprecated 2024-11-05 HTTP+SSE transport as a third edge transport."""

from __future__ import annotations

import pytest
from conftest import demo_server, federation, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.client.sse import sse_client

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_http_sse_client_lists_calls_and_gets_progress(nats_server: NatsServer, mode: str, version: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        await fed.add_server("probe", python_server("probe_server.py"))
        sse_url = fed.url.removesuffix("/mcp") + "/sse"
        async with Client(sse_client(sse_url), mode=mode) as client:  # type: ignore[arg-type]
            assert client.protocol_version == version
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"demo_add", "probe_count"} <= names
            assert (await client.call_tool("demo_add", {"a": 5, "b": 6})).structured_content == {"result": 11}
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            await client.call_tool("probe_count", {"steps": 2}, progress_callback=on_progress)
            assert seen == [1, 2]
