"""A dual-era MCP server whose tools ask the client: elicitation, sampling, roots.

With a 2026-07-28 client the questions come back as input_required results;
with a handshake-era client they are mid-call server-to-client requests.
Run with no arguments for stdio, or `http PORT` for Streamable HTTP.
"""

from __future__ import annotations

import sys
from typing import Annotated

import mcp_types as types
from mcp.server.mcpserver import Elicit, MCPServer, Resolve
from mcp.server.mcpserver.resolve import ListRoots, Sample
from pydantic import BaseModel

mcp = MCPServer("asker", version="1.0.0")


class Confirm(BaseModel):
    ok: bool


def ask_confirm(name: str) -> Elicit[Confirm]:
    return Elicit(f"Greet {name}?", Confirm)


def ask_poem(topic: str) -> Sample:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"A poem about {topic}"))
    return Sample([message], max_tokens=50)


def ask_roots() -> ListRoots:
    return ListRoots()


@mcp.tool()
def greet(name: str, confirm: Annotated[Confirm, Resolve(ask_confirm)]) -> str:
    """Greet someone after the user confirms."""
    return f"hello {name} (confirmed={confirm.ok})"


@mcp.tool()
def poem(topic: str, sampled: Annotated[types.CreateMessageResult, Resolve(ask_poem)]) -> str:
    """Ask the client's model for a poem."""
    content = sampled.content
    return content.text if isinstance(content, types.TextContent) else "?"


@mcp.tool()
def roots(listed: Annotated[types.ListRootsResult, Resolve(ask_roots)]) -> list[str]:
    """The client's roots."""
    return [str(r.uri) for r in listed.roots]


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":  # `http PORT`: Streamable HTTP
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        mcp.run()
