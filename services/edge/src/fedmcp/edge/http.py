"""The edge's HTTP face: Streamable HTTP (both eras on one endpoint) plus health endpoints."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from fedmcp.edge.event_store import MemoryEventStore
from fedmcp.edge.guard import JsonRpcGuard
from fedmcp.edge.legacy_sse import legacy_sse_routes
from fedmcp.edge.runtime import Edge
from fedmcp.edge.tracecontext import TraceContext
from fedmcp.shared import chunks
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

LOOPBACK = ("127.0.0.1", "localhost", "::1")
RETRY_MS = 1000
"""SSE `retry` hint for handshake-era clients whose stream was closed for polling."""


def build_app(edge: Edge, *, host: str, path: str = "/mcp", max_body_bytes: int = chunks.DEFAULT_LIMIT) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = edge.ready
        return JSONResponse(
            {"ready": ready, "nats": bool(edge.nc.is_connected), "catalog_loaded": edge.view.loaded.is_set()},
            status_code=200 if ready else 503,
        )

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
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *legacy_sse_routes(edge.federated, security=security, max_body_bytes=max_body_bytes),
        ],
    )
    app.add_middleware(JsonRpcGuard, path=path, max_body_bytes=max_body_bytes)
    app.add_middleware(TraceContext)
    return app


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the caller decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so callers know the port (0 = any free) before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it small responses wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve_http(
    edge: Edge,
    sock: socket.socket,
    *,
    stop: anyio.Event,
    path: str = "/mcp",
    max_body_bytes: int = chunks.DEFAULT_LIMIT,
) -> None:
    host = sock.getsockname()[0]
    app = build_app(edge, host=host, path=path, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=10)
    server = _Uvicorn(config)
    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            await stop.wait()
            server.should_exit = True

        tg.start_soon(stopper)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
