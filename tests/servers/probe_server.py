"""An MCP server for probing the adapter: crashes, slow calls, environment and HTTP headers.

Run with no arguments for stdio, or `http PORT` for Streamable HTTP.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("probe", version="1.0.0")


@mcp.tool()
def crash() -> str:
    """Exit the process at once, as a crash would."""
    os._exit(3)


@mcp.tool()
def pid() -> int:
    """The server's process id (changes when it was restarted)."""
    return os.getpid()


CANCELLED: list[float] = []


@mcp.tool()
async def sleep(seconds: float, ctx: Context) -> str:
    """Answer after a while; a cancelled sleep is counted. Reports progress 0 when it starts."""
    await ctx.report_progress(0)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(seconds)
        raise
    return f"slept {seconds}"


@mcp.tool()
def cancelled() -> list[float]:
    """The sleeps that were cancelled so far."""
    return CANCELLED


@mcp.tool()
async def slow_pid(seconds: float) -> int:
    """The process id, after a while (to see which pooled session served a call)."""
    await anyio.sleep(seconds)
    return os.getpid()


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails, as a broken tool would."""
    raise ValueError(reason)


@mcp.tool()
def env(name: str) -> str:
    """An environment variable of the server process ('' when unset)."""
    return os.environ.get(name, "")


@mcp.tool()
def header(name: str, ctx: Context) -> str:
    """An HTTP request header the server received ('' when unset or not HTTP)."""
    headers = ctx.headers or {}
    return str(headers.get(name.lower(), ""))


@mcp.tool()
async def count(steps: int, ctx: Context) -> str:
    """Report progress once per step."""
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
    return f"counted {steps}"


@mcp.tool()
async def chatty(ctx: Context) -> str:
    """Send one log message per level from debug to error."""
    await ctx.debug("a debug line")
    await ctx.info("an info line")
    await ctx.warning("a warning line")
    await ctx.error("an error line")
    return "logged"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        mcp.run()
