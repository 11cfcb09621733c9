"""An MCP server that records every execution in a shared file, to count runs across replicas.

`LEDGER` (environment) names the file; each line is `<tool> <adapter pid>` written when a call starts.
"""

from __future__ import annotations

import os

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("ledger", version="1.0.0")


def record(tool: str) -> None:
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(f"{tool} {os.getppid()}\n")


@mcp.tool()
async def transfer(seconds: float) -> str:
    """Not idempotent: every run moves money."""
    record("transfer")
    await anyio.sleep(seconds)
    return "moved"


@mcp.tool(annotations=types.ToolAnnotations(read_only_hint=True))
async def balance(seconds: float) -> str:
    """Read-only: safe to run again."""
    record("balance")
    await anyio.sleep(seconds)
    return "42"


if __name__ == "__main__":
    mcp.run()
