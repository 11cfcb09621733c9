"""An MCP server that records every execution in a shared file, to count runs across replicas.

`LEDGER` (environment) names the file; each line is `<tool> <adapter pid>` written when a call starts,
or `transfer <adapter pid> <id>` for a transfer given an `id`. The pid is the parent's at start-up, so a
call that runs after its adapter was killed is still counted against that adapter.
"""

from __future__ import annotations

import os

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("ledger", version="1.0.0")
ADAPTER_PID = os.getppid()


def record(tool: str, *extra: str) -> None:
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(" ".join([tool, str(ADAPTER_PID), *extra]) + "\n")  # one short append: one write


@mcp.tool()
async def transfer(seconds: float, id: str = "") -> str:
    """Not idempotent: every run moves money. `id` names the transfer in the ledger."""
    record("transfer", *([id] if id else []))
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
