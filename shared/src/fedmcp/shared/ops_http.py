"""The small HTTP face every service has: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (ready)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl
from collections.abc import Callable, Iterator

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp


def ops_routes(readiness: Callable[[], dict[str, bool]]) -> list[Route]:
    """`readiness` names each condition; ready when all hold."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    return [Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]


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


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the caller decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_asgi(
    app: ASGIApp,
    sock: socket.socket,
    *,
    stop: anyio.Event,
    ssl: _ssl.SSLContext | None = None,
    http: type[asyncio.Protocol] | str = "auto",
) -> None:
    """Serve `app` on `sock` until `stop`; HTTPS with `ssl` (fedmcp.shared.tls.server_context);
    `http`: uvicorn's HTTP protocol (a name or a class)."""

    def use_context(config: uvicorn.Config, default: Callable[[], _ssl.SSLContext]) -> _ssl.SSLContext:
        assert ssl is not None
        alpn: list[str] | None = getattr(config.http_protocol_class, "alpn_protocols", None)
        if alpn:
            ssl.set_alpn_protocols(alpn)
        return ssl

    config = uvicorn.Config(
        app,
        http=http,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=10,
        ssl_context_factory=None if ssl is None else use_context,
    )
    server = _Uvicorn(config)
    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            await stop.wait()
            server.should_exit = True

        tg.start_soon(stopper)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()


async def serve_ops(sock: socket.socket, readiness: Callable[[], dict[str, bool]], *, stop: anyio.Event) -> None:
    await serve_asgi(Starlette(routes=ops_routes(readiness)), sock, stop=stop)
