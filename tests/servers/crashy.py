"""An MCP server that can be told to crash, for restart tests."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("crashy", version="1.0.0")


@mcp.tool()
def crash() -> str:
    """Exit the process at once, as a crash would."""
    os._exit(3)


@mcp.tool()
def pid() -> int:
    """The server's process id (changes when it was restarted)."""
    return os.getpid()


if __name__ == "__main__":
    mcp.run()
