"""A stateful MCP server: a counter per session, to tell backing sessions apart.

On stdio the session is the process; over Streamable HTTP (`http PORT`) it is the client's
`Mcp-Session-Id` (a 2026-07-28 client, which has none, shares one counter). `ADAPTER_PID`
in each answer is the parent's pid at start-up (the adapter that spawned a stdio server).
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("counter", version="1.0.0")
COUNTS: dict[str, int] = {}
ADAPTER_PID = os.getppid()


def _session(ctx: Context) -> str:
    return str((ctx.headers or {}).get("mcp-session-id", "process"))


@mcp.tool()
def bump(ctx: Context) -> dict[str, object]:
    """Count one more call in this session; answers the count, the process, its adapter, the session."""
    session = _session(ctx)
    COUNTS[session] = COUNTS.get(session, 0) + 1
    return {"count": COUNTS[session], "pid": os.getpid(), "adapter": ADAPTER_PID, "session": session}


@mcp.tool()
async def slow_bump(seconds: float, ctx: Context) -> dict[str, object]:
    """`bump` after a while."""
    await anyio.sleep(seconds)
    return bump(ctx)


@mcp.tool()
async def say(word: str, seconds: float, ctx: Context) -> str:
    """Send `word` as a log message, then answer after a while (several may be in flight)."""
    await ctx.info(word)
    await anyio.sleep(seconds)
    return word


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        mcp.run()
