"""A FastMCP proxy fronting a stdio server over Streamable HTTP (run by the harness in its own venv).

<fastmcp venv>/bin/python scripts/bench/peer_fastmcp.py PORT COMMAND [ARGS...]
"""

from __future__ import annotations

import sys

from fastmcp.client.transports import StdioTransport  # type: ignore[import-not-found]
from fastmcp.server import create_proxy  # type: ignore[import-not-found]


def main() -> None:
    port, command, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    proxy = create_proxy(StdioTransport(command=command, args=args, keep_alive=True), name="bench-fastmcp-proxy")
    proxy.run("http", host="127.0.0.1", port=port, path="/mcp", show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
