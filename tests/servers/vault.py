"""An MCP server with a destructive tool (consent) and a harmless one."""

from __future__ import annotations

import mcp_types as types
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("vault", version="1.0.0")


@mcp.tool(annotations=types.ToolAnnotations(destructive_hint=True))
def wipe(what: str) -> str:
    """Destroys `what` (needs the user's consent)."""
    return f"wiped {what}"


@mcp.tool(annotations=types.ToolAnnotations(read_only_hint=True))
def peek(what: str) -> str:
    """Reads `what`."""
    return f"peeked {what}"


if __name__ == "__main__":
    mcp.run()
