"""The 2024-11-05 HTTP+SSE transport: `GET /sse` opens the stream, messages are POSTed to `/messages/`.

Deprecated by the spec but still spoken by older clients; the SDK's transport
carries it, and the same federated server answers.
"""

from __future__ import annotations

from fedmcp.edge.server import FederatedServer
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"


class _StreamEndpoint:
    """An ASGI endpoint (Starlette routes a class instance as a raw ASGI app)."""

    def __init__(self, transport: SseServerTransport, federated: FederatedServer) -> None:
        self.transport = transport
        self.federated = federated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.transport.connect_sse(scope, receive, send) as (read, write):
            server = self.federated.server
            await server.run(read, write, self.federated.initialization_options())


class _MessageEndpoint:
    def __init__(self, transport: SseServerTransport) -> None:
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.transport.handle_post_message(scope, receive, send)


def legacy_sse_routes(
    federated: FederatedServer, *, security: TransportSecuritySettings | None, max_body_bytes: int
) -> list[Route]:
    transport = SseServerTransport(MESSAGES_PATH, security_settings=security, max_request_body_size=max_body_bytes)
    return [
        Route(SSE_PATH, endpoint=_StreamEndpoint(transport, federated), methods=["GET"]),
        Route(MESSAGES_PATH, endpoint=_MessageEndpoint(transport), methods=["POST"]),
    ]
