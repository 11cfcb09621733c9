"""The edge's HTTP face: Streamable HTTP (both eras on one endpoint) plus health endpoints."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from ssl import SSLContext

import anyio
from fedmcp.edge.auth import LOOPBACK, Authenticator, AuthGate, principal_of, report_denied
from fedmcp.edge.consent_page import consent_routes
from fedmcp.edge.consent_page import link as consent_link
from fedmcp.edge.event_store import MemoryEventStore
from fedmcp.edge.fastlane import FastLane, LaneRules, Watchers
from fedmcp.edge.guard import JsonRpcGuard, RequestGuard, sdk_security, transport_security
from fedmcp.edge.http_protocol import CoalescingHttpToolsProtocol
from fedmcp.edge.legacy_sse import MESSAGES_PATH, SSE_PATH, legacy_sse_routes
from fedmcp.edge.runtime import Edge
from fedmcp.edge.session_lane import SessionLane
from fedmcp.edge.sessions import FederatedSessionManager
from fedmcp.edge.tracecontext import TraceContext
from fedmcp.shared import chunks
from fedmcp.shared.ops_http import ops_routes, serve_asgi
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

RETRY_MS = 1000
"""SSE `retry` hint for handshake-era clients whose stream was closed for polling."""
LOCAL_IDLE = 2.0
"""Seconds without a request after which an edge drops its in-memory copy of a handshake-era session.
The session lives on in the sessions bucket and the next request, on any edge, adopts it again: an idle
session costs its record, not a transport and its tasks. Short, because a live copy holds about 50 kB: the
window bounds how many a burst of new sessions keeps in memory at once (docs/benchmarks.md)."""


def build_app(
    edge: Edge,
    *,
    host: str,
    path: str = "/mcp",
    max_body_bytes: int = chunks.DEFAULT_LIMIT,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    authenticator: Authenticator | None = None,
    anonymous: bool = False,
    public_url: str = "",
) -> ASGIApp:
    """`allowed_hosts` / `allowed_origins`: the Host and Origin headers taken on the MCP paths (empty: the
    defaults of `guard.transport_security` for the address bound, `host`). Callers authenticate with
    `authenticator`; without one, `anonymous` must be asked for and the listener must be loopback."""
    if authenticator is None and not (anonymous and host in LOOPBACK):
        raise ValueError(
            "no authentication configured: anonymous access must be enabled explicitly and needs a loopback address"
        )

    def readiness() -> dict[str, bool]:
        return {"nats": bool(edge.nc.is_connected), "catalog_loaded": edge.view.loaded.is_set()}

    # DNS-rebinding protection: Host and Origin are checked first by the RequestGuard, then by the SDK.
    checks = transport_security(host, allowed_hosts, allowed_origins)
    security = sdk_security(checks)
    federated = edge.federated
    events = MemoryEventStore()
    sessions = FederatedSessionManager(
        federated.server,
        directory=edge.directory,
        feed=edge.feed,
        principal=lambda request: principal_of(request, federated.local_principal).id,
        closed=federated.session_closed,
        security_settings=security,
        max_request_body_size=max_body_bytes,
        event_store=events,
        retry_interval=RETRY_MS,
        session_idle_timeout=LOCAL_IDLE,
    )
    federated.expire_session = sessions.expire
    federated.hold_session = sessions.holding
    edge.http_sessions = sessions
    app = Starlette(
        routes=[
            Route(path, endpoint=StreamableHTTPASGIApp(sessions)),
            *ops_routes(readiness),
            *legacy_sse_routes(federated, security=security, max_body_bytes=max_body_bytes),
            *(authenticator.routes(path) if authenticator is not None else []),
            *consent_routes(federated),
        ],
    )
    governance = edge.federated.governance
    if public_url:
        governance.consent_page = partial(consent_link, edge.federated, public_url)
    # The checks wrap the Starlette app rather than sit inside it, so the fast lane's calls pass
    # through nothing else (an exception in them is uvicorn's plain 500, never a traceback).
    # The lanes sit innermost, behind every check: the fast lane takes plain 2026-07-28 calls and hands
    # session requests on to the session lane, which takes plain handshake-era calls.
    rules, watchers = LaneRules(federated), Watchers()
    session_lane = SessionLane(
        app,
        path=path,
        federated=federated,
        rules=rules,
        directory=edge.directory,
        events=events,
        retry_ms=RETRY_MS,
        watchers=watchers,
    )
    fast = FastLane(session_lane, path=path, federated=federated, rules=rules, watchers=watchers)
    app.router.lifespan_context = lambda app: _both(sessions.run(), watchers.running())
    gate = AuthGate(
        fast,
        authenticator=authenticator,
        step_up=governance.step_up(lambda: edge.view.table) if authenticator is not None else None,
        on_denied=partial(report_denied, governance),
    )
    shaped = JsonRpcGuard(gate, path=path, max_body_bytes=max_body_bytes)
    guarded = RequestGuard(shaped, paths=[path, SSE_PATH, MESSAGES_PATH], security=checks)
    return TraceContext(guarded)


async def serve_http(
    edge: Edge,
    sock: socket.socket,
    *,
    stop: anyio.Event,
    path: str = "/mcp",
    max_body_bytes: int = chunks.DEFAULT_LIMIT,
    ssl: SSLContext | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    authenticator: Authenticator | None = None,
    anonymous: bool = False,
) -> None:
    """Serve MCP on `sock` until `stop`: HTTPS with `ssl` (fedmcp.shared.tls.server_context), else HTTP."""
    app = build_app(
        edge,
        host=sock.getsockname()[0],
        path=path,
        max_body_bytes=max_body_bytes,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        authenticator=authenticator,
        anonymous=anonymous,
        public_url=endpoint(sock, "", tls=ssl is not None),
    )
    await serve_asgi(app, sock, stop=stop, ssl=ssl, http=CoalescingHttpToolsProtocol)


@asynccontextmanager
async def _both(
    first: AbstractAsyncContextManager[None], second: AbstractAsyncContextManager[None]
) -> AsyncIterator[None]:
    async with first, second:
        yield


def endpoint(sock: socket.socket, path: str, *, tls: bool) -> str:
    """The URL clients use for the edge listening on `sock`."""
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"
