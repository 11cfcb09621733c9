"""An MCP server that says where it runs: `SITE` (environment) names its region or site."""

from __future__ import annotations

import os

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("regional", version="1.0.0")


@mcp.tool(annotations=types.ToolAnnotations(read_only_hint=True))
def where() -> str:
    """The site this replica runs in (read-only, so the gateway may fail it over)."""
    return os.environ["SITE"]


@mcp.tool(annotations=types.ToolAnnotations(read_only_hint=True))
async def slow_where(seconds: float, ctx: Context) -> str:
    """Report progress 0 (the call has started here), then answer after `seconds`."""
    await ctx.report_progress(0)
    await anyio.sleep(seconds)
    return os.environ["SITE"]


if __name__ == "__main__":
    mcp.run()
