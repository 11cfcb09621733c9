"""A low-level MCP server whose tool list carries caching hints: `cached.py TTL_MS SCOPE`."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.stdio import stdio_server

TTL, SCOPE = int(sys.argv[1]), sys.argv[2]


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="ping_me", input_schema={"type": "object"})])


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text="pong")])


server = Server(
    "cached",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    cache_hints={"tools/list": CacheHint(ttl_ms=TTL, scope=SCOPE)},  # type: ignore[arg-type]
)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
