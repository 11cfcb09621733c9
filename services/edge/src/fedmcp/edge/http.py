"""The edge's HTTP face: Streamable HTTP (both eras on one endpoint) plus health endpoints."""

from __future__ import annotations

import socket

import anyio
from fedmcp.edge.event_store import MemoryEventStore
from fedmcp.edge.guard import JsonRpcGuard
from fedmcp.edge.legacy_sse import legacy_sse_routes
from fedmcp.edge.runtime import Edge
from fedmcp.edge.tracecontext import TraceContext
from fedmcp.shared import chunks
from fedmcp.shared.ops_http import ops_routes, serve_asgi
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

LOOPBACK = ("127.0.0.1", "localhost", "::1")
RETRY_MS = 1000
"""SSE `retry` hint for handshake-era clients whose stream was closed for polling."""


def build_app(edge: Edge, *, host: str, path: str = "/mcp", max_body_bytes: int = chunks.DEFAULT_LIMIT) -> Starlette:
    def readiness() -> dict[str, bool]:
        return {"nats": bool(edge.nc.is_connected), "catalog_loaded": edge.view.loaded.is_set()}

    if host in LOOPBACK:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    else:
        # Behind a load balancer the Host header is the public name; operators
        # restrict origins there. DNS-rebinding checks stay on for loopback.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = edge.federated.server.streamable_http_app(
        streamable_http_path=path,
        host=host,
        transport_security=security,
        max_request_body_size=max_body_bytes,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
        custom_starlette_routes=[
            *ops_routes(readiness),
            *legacy_sse_routes(edge.federated, security=security, max_body_bytes=max_body_bytes),
        ],
    )
    app.add_middleware(JsonRpcGuard, path=path, max_body_bytes=max_body_bytes)
    app.add_middleware(TraceContext)
    return app


async def serve_http(
    edge: Edge,
    sock: socket.socket,
    *,
    stop: anyio.Event,
    path: str = "/mcp",
    max_body_bytes: int = chunks.DEFAULT_LIMIT,
) -> None:
    app = build_app(edge, host=sock.getsockname()[0], path=path, max_body_bytes=max_body_bytes)
    await serve_asgi(app, sock, stop=stop)
