"""What the edge adds to the SDK's SERVER span of each request (MCP semantic conventions).

The SDK names the span and sets method, request id, protocol version and tool;
the session id lives in the transport, so the edge sets it here, inside that span.
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from opentelemetry import trace
from starlette.requests import Request

SESSION_HEADER = "mcp-session-id"


class SessionAttributes:
    """Server middleware: `mcp.session.id` for handshake-era HTTP sessions, `network.transport`."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        span = trace.get_current_span()
        if span.is_recording():
            request = ctx.request
            if isinstance(request, Request):
                span.set_attribute("network.transport", "tcp")
                session = request.headers.get(SESSION_HEADER)
                if session:
                    span.set_attribute("mcp.session.id", session)
            else:
                span.set_attribute("network.transport", "pipe")
        return await call_next(ctx)
