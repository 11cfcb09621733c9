"""An MCP server with large results: a binary resource and an image tool, sizes chosen by the caller."""

from __future__ import annotations

import base64
import hashlib

import mcp_types as types
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("big", version="1.0.0")


def blob(size: int) -> bytes:
    """Deterministic, incompressible-looking bytes (so corruption anywhere shows)."""
    out = bytearray()
    block = hashlib.sha256(str(size).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


@mcp.resource("big://blob/{size}", mime_type="application/octet-stream")
def big_blob(size: str) -> bytes:
    """`size` bytes of binary data."""
    return blob(int(size))


@mcp.tool()
def image(size: int) -> types.ImageContent:
    """A PNG-typed image of `size` bytes."""
    return types.ImageContent(type="image", data=base64.b64encode(blob(size)).decode(), mime_type="image/png")


@mcp.tool()
def digest(data: str) -> str:
    """SHA-256 of a (possibly large) argument."""
    return hashlib.sha256(data.encode()).hexdigest()


if __name__ == "__main__":
    mcp.run()
