"""The federation core, end to end: SDK clients -> edge -> NATS -> adapter -> real MCP servers."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import demo_server, federation, python_server
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

MODES = ["legacy", "2026-07-28"]


async def all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.mark.parametrize("mode", MODES)
async def test_discovery_then_call_in_each_era(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            names = {t.name for t in await all_tools(client)}
            assert names == {"demo_add", "demo_echo"}
            result = await client.call_tool("demo_add", {"a": 2, "b": 40})
            assert not result.is_error
            assert text_of(result) == "42"
            prompt = await client.get_prompt("demo_summarize", {"topic": "NATS"})
            assert "NATS" in str(prompt.messages[0].content)
            resources = await client.list_resources()
            assert [str(r.uri) for r in resources.resources] == ["notes://index"]
            templates = await client.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == ["notes://{name}"]
            read = await client.read_resource("notes://welcome")
            assert read.contents[0].text == "Welcome to fedmcp."  # type: ignore[union-attr]


async def test_colliding_tool_names_get_distinct_names(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("alpha", demo_server())
        await fed.add_server("beta", demo_server())
        async with Client(fed.url) as client:
            names = sorted(t.name for t in await all_tools(client))
            assert names == ["alpha_add", "alpha_echo", "beta_add", "beta_echo"]
            assert text_of(await client.call_tool("alpha_echo", {"text": "a"})) == "a"
            assert text_of(await client.call_tool("beta_echo", {"text": "b"})) == "b"


async def test_unprefixed_servers_clash_is_reported_not_dropped(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("one", demo_server(prefix=""))
        await fed.add_server("two", demo_server(prefix=""))
        assert fed.edge is not None
        table = fed.edge.view.table
        assert len(table.tool_list) == 4  # nothing dropped
        assert {"add", "echo"} <= set(table.tools)
        assert any("clashes" in c and "'two'" in c for c in table.conflicts)
        renamed = [n for n in table.tools if n.startswith("add_")]
        assert len(renamed) == 1 and table.tools[renamed[0]].server == "two"
        # The same resource URI from two servers: the second is shadowed and reported.
        assert any("resource 'notes://index' of server 'two' is shadowed" in c for c in table.conflicts)
        async with Client(fed.url) as client:
            assert text_of(await client.call_tool(renamed[0], {"text": "x"} if False else {"a": 1, "b": 1})) == "2"


async def test_150_tools_over_several_pages(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("many", python_server("many_tools.py"))
        async with Client(fed.url, mode="legacy") as client:
            first = await client.session.list_tools()
            assert len(first.tools) == 100 and first.next_cursor
            tools = await all_tools(client)
            assert [t.name for t in tools] == [f"many_tool_{i:03d}" for i in range(150)]
            assert text_of(await client.call_tool("many_tool_149", {})) == "called tool_149"
            with pytest.raises(MCPError) as err:
                await client.session.list_tools(params=types.PaginatedRequestParams(cursor="not-a-cursor"))
            assert err.value.error.code == jsonrpc.INVALID_PARAMS


async def test_server_joining_and_leaving_notifies_legacy_client(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        changes: list[str] = []
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changes.append("tools")
                changed.set()

        async with Client(fed.url, mode="legacy", message_handler=on_message) as client:
            assert len(await all_tools(client)) == 2
            await fed.add_server("many", python_server("many_tools.py"))
            with anyio.fail_after(10):
                await changed.wait()
            assert len(await all_tools(client)) == 152
            changed = anyio.Event()
            await fed.remove_server("many")
            with anyio.fail_after(10):
                await changed.wait()
            assert {t.name for t in await all_tools(client)} == {"demo_add", "demo_echo"}
            assert changes.count("tools") >= 2


async def test_server_joining_and_leaving_notifies_modern_listener(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with Client(fed.url, mode="2026-07-28") as client, client.listen(tools_list_changed=True) as sub:
            await fed.add_server("many", python_server("many_tools.py"))
            with anyio.fail_after(10):
                async for _event in sub:
                    break
            assert len(await all_tools(client)) == 152


async def test_backing_server_crash_and_restart(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url) as client:
            first_pid = (await client.call_tool("probe_pid", {})).structured_content
            with anyio.fail_after(10), pytest.raises(MCPError) as err:
                await client.call_tool("probe_crash", {})
            assert err.value.error.code == jsonrpc.UPSTREAM_UNAVAILABLE
            assert "probe" in err.value.error.message
            with anyio.fail_after(15):
                await adapter.backend.wait_ready()
            second_pid = (await client.call_tool("probe_pid", {})).structured_content
            assert second_pid != first_pid
            assert adapter.backend.restarts >= 1


async def test_requests_while_backing_server_is_down_fail_fast(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        broken = python_server("probe_server.py")
        adapter = await fed.add_server("probe", broken)
        adapter.restart_wait = 0.5
        adapter.backend.primary.config = python_server("does_not_exist.py")  # every restart now fails
        async with Client(fed.url) as client:
            with pytest.raises(MCPError):
                await client.call_tool("probe_crash", {})
            start = anyio.current_time()
            with anyio.fail_after(10), pytest.raises(MCPError) as err:
                await client.call_tool("probe_pid", {})
            assert err.value.error.code == jsonrpc.UPSTREAM_UNAVAILABLE
            assert anyio.current_time() - start < 5


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_tool(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            with pytest.raises(MCPError) as err:
                await client.session.call_tool("nope_nothing", {})
            assert err.value.error.code == jsonrpc.INVALID_PARAMS
            assert "Unknown tool" in err.value.error.message
            with pytest.raises(MCPError) as err:
                await client.read_resource("nowhere://x")
            expected = jsonrpc.RESOURCE_NOT_FOUND_LEGACY if mode == "legacy" else jsonrpc.INVALID_PARAMS
            assert err.value.error.code == expected


async def test_stdio_edge_in_each_era(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "fedmcp.edge.main", "--stdio", "--nats-url", nats_server.url]
        )
        for mode in MODES:
            async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
                assert {t.name for t in (await client.list_tools()).tools} == {"demo_add", "demo_echo"}
                assert text_of(await client.call_tool("demo_add", {"a": 1, "b": 2})) == "3"


@pytest.mark.parametrize("mode", MODES)
async def test_completion_routes_by_prompt_and_template(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            by_prompt = await client.complete(
                types.PromptReference(type="ref/prompt", name="demo_summarize"),
                {"name": "topic", "value": "n"},
            )
            assert by_prompt.completion.values == ["nats"]
            by_template = await client.complete(
                types.ResourceTemplateReference(type="ref/resource", uri="notes://{name}"),
                {"name": "name", "value": "w"},
            )
            assert by_template.completion.values == ["welcome"]


async def test_edge_forgets_handshake_era_clients_that_left(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        assert fed.edge is not None
        records = fed.edge.directory.records  # every edge's copy of the region's sessions
        async with Client(fed.url, mode="legacy") as client:
            await client.list_tools()
            assert len(records) == 1
        with anyio.fail_after(10):  # the client's DELETE removes the record from the bucket, the watch from memory
            await fed.edge.directory.wait_until(lambda records: not records)
        assert len(fed.edge.federated.legacy_clients) == 0
