"""Bench backing server: one large binary resource, so a 50 MB read can cross fedmcp end to end.

python scripts/bench/big_server.py            # stdio
"""

from __future__ import annotations

import hashlib
import sys

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bench-big", version="1.0.0")
_cache: dict[int, bytes] = {}


def blob(size: int) -> bytes:
    """Deterministic, incompressible bytes (cached, so the server's own cost stays out of the timing)."""
    if size not in _cache:
        out = bytearray()
        block = hashlib.sha256(str(size).encode()).digest()
        while len(out) < size:
            block = hashlib.sha256(block).digest()
            out += block * 64
        _cache[size] = bytes(out[:size])
    return _cache[size]


def big_blob(size: str) -> bytes:
    """`size` bytes of binary data (base64 in the JSON-RPC result: 4/3 of `size` on the wire)."""
    return blob(int(size))


@mcp.tool()
def ping() -> str:
    """Readiness probe."""
    return "pong"


if __name__ == "__main__":
    http = len(sys.argv) > 2 and sys.argv[1] == "http"
    # Own URI schemes per transport, so that both can sit in one federation without shadowing each other.
    scheme = "bighttp" if http else "big"
    mcp.resource(f"{scheme}://blob/{{size}}", mime_type="application/octet-stream")(big_blob)
    if http:
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        mcp.run()
