"""A dual-era MCP server with subscribable resources and a tool that changes them."""

from __future__ import annotations

import mcp_types as types
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession

mcp = MCPServer("watched", version="1.0.0")
COUNTS = {"watch://a": 0, "watch://b": 0}
SUBSCRIBERS: dict[str, list[ServerSession]] = {}


@mcp.resource("watch://a", mime_type="text/plain")
def a() -> str:
    return str(COUNTS["watch://a"])


@mcp.resource("watch://b", mime_type="text/plain")
def b() -> str:
    return str(COUNTS["watch://b"])


@mcp.tool()
async def touch(uri: str, ctx: Context) -> int:
    """Change a resource and tell every subscriber, in both eras."""
    COUNTS[uri] += 1
    await ctx.notify_resource_updated(uri)  # 2026-07-28 listen streams
    for session in SUBSCRIBERS.get(uri, []):  # handshake-era subscribers
        await session.send_resource_updated(uri)
    return COUNTS[uri]


async def subscribe(ctx: ServerRequestContext, params: types.SubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIBERS.setdefault(str(params.uri), []).append(ctx.session)
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    SUBSCRIBERS[str(params.uri)] = []
    return types.EmptyResult()


mcp._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)

if __name__ == "__main__":
    mcp.run()
