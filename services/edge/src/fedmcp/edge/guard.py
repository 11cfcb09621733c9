"""First line of defence on the MCP endpoint: headers, Host and Origin, size, nesting and JSON-RPC
shape, before the SDK sees a request.

Both eras then get the same, spec-given answers: unparsable JSON (or not UTF-8) is -32700,
anything that is not one JSON-RPC 2.0 message object, or is nested deeper than `max_depth`,
is -32600 (HTTP 400), an oversize body is HTTP 413. The SDK would answer the handshake-era
shape errors with a -32602 carrying pydantic's text; clients deserve the JSON-RPC code and a
short message instead.

`RequestGuard`, in front of it, answers too many or too large headers with 431 on every path,
and on the MCP paths checks Host and Origin against DNS rebinding with the SDK's own check
(`mcp.server.transport_security`): a Host not allowed is 421, an Origin not allowed is 403.
Every refusal is a JSON-RPC error object (id null).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from fedmcp.shared import jsonrpc
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_decoder = msgspec.json.Decoder()

MESSAGE_KEY = "fedmcp.message"
"""Where the guard leaves the decoded body in the ASGI scope, for the fast lane (fastlane.py)."""
MAX_DEPTH = 64
"""Deepest JSON nesting accepted in a request body (arrays and objects)."""
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
"""Total size of a request's header names and values (what Node.js and h11 allow)."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_ORIGINS = [
    f"{scheme}://{host}:*" for scheme in ("http", "https") for host in ("127.0.0.1", "localhost", "[::1]")
]
ANY = "*"


def transport_security(
    bind_host: str, allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = ()
) -> TransportSecuritySettings:
    """Which Host and Origin headers the edge takes. Entries are exact, `name:*` (any port) or `*` (any).

    Defaults: bound to loopback, only loopback hosts and origins; otherwise any Host (behind a load
    balancer it is the public name) and no Origin at all: browsers must be allowed explicitly.
    A request without an Origin header (every non-browser client) passes the Origin check."""
    loopback = bind_host in LOOPBACK
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(allowed_hosts) or (LOOPBACK_HOSTS if loopback else [ANY]),
        allowed_origins=list(allowed_origins) or (LOOPBACK_ORIGINS if loopback else []),
    )


def sdk_security(settings: TransportSecuritySettings) -> TransportSecuritySettings:
    """The settings for the SDK's transports, which check again: the SDK knows no `*`, so where one is
    used the edge's `RequestGuard` alone decides."""
    if ANY in settings.allowed_hosts or ANY in settings.allowed_origins:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return settings


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays and objects in `value` nest deeper than `limit` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[Any] = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def shape_error(message: Any) -> str | None:
    """Why `message` is not one JSON-RPC 2.0 request, notification or response; None if it is."""
    if isinstance(message, list):
        return "batches are not supported: send one JSON-RPC message per request"
    if not isinstance(message, dict):
        return "the body must be a JSON-RPC message object"
    if message.get("jsonrpc") != "2.0":
        return 'the "jsonrpc" member must be "2.0"'
    if ("id" in message and not isinstance(message["id"], str | int)) or isinstance(message.get("id"), bool):
        return 'the "id" member must be a string or an integer'
    if "method" in message:
        if not isinstance(message["method"], str):
            return 'the "method" member must be a string'
        if "params" in message and not isinstance(message["params"], dict):
            return 'the "params" member must be an object'
        return None
    if "id" not in message or ("result" in message) == ("error" in message):
        return "a JSON-RPC message needs a method, or an id with exactly one of result and error"
    return None


def _refusal(message: str, code: int = jsonrpc.INVALID_REQUEST) -> bytes:
    return jsonrpc.encode_error(None, code, message)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Header limits on every request (431); Host (421) and Origin (403) on the MCP paths."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Sequence[str],
        security: TransportSecuritySettings,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.paths = {p.rstrip("/") for p in paths}
        self.security = security
        self._sdk = TransportSecurityMiddleware(security)
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        raw = scope["headers"]
        if len(raw) > self.max_headers:
            return 431, f"Request Header Fields Too Large: more than {self.max_headers} headers"
        size = 0
        host = origin = None
        for key, value in raw:  # the first of each, as Starlette's Headers.get
            size += len(key) + len(value)
            if key == b"host" and host is None:
                host = value.decode("latin-1")
            elif key == b"origin" and origin is None:
                origin = value.decode("latin-1")
        if size > self.max_header_bytes:
            return 431, f"Request Header Fields Too Large: more than {self.max_header_bytes} bytes of headers"
        if scope["path"].rstrip("/") not in self.paths or not self.security.enable_dns_rebinding_protection:
            return None
        # The SDK's own checks (exact, or `name:*` for any port), plus `*` for "any".
        if ANY not in self.security.allowed_hosts and not self._sdk._validate_host(host):
            return 421, "Misdirected Request: this Host is not served here"
        if ANY not in self.security.allowed_origins and not self._sdk._validate_origin(origin):
            return 403, "Forbidden: requests from this Origin are not allowed"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            trim_header_values(scope)
            problem = self._problem(scope)
            if problem is not None:
                status, message = problem
                await _send_json(send, status, _refusal(message))
                return
        await self.app(scope, receive, send)


_OWS = (b" ", b"\t")


def trim_header_values(scope: Scope) -> None:
    """Header values without the whitespace around them (RFC 9110 5.5), whichever HTTP parser
    uvicorn runs: h11 strips it, httptools keeps it, and both the edge and the SDK compare values."""
    raw = scope["headers"]
    for _, value in raw:
        if value[:1] in _OWS or value[-1:] in _OWS:
            scope["headers"] = [(k, v.strip(b" \t")) for k, v in raw]
            return


class JsonRpcGuard:
    def __init__(self, app: ASGIApp, *, path: str, max_body_bytes: int, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.path = path
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path.rstrip("/"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                body = jsonrpc.encode_error(
                    None, jsonrpc.INVALID_REQUEST, f"request body exceeds {self.max_body_bytes} bytes"
                )
                await _send_json(send, 413, body)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        too_nested = f"Invalid Request: JSON nested deeper than {self.max_depth} levels"
        try:
            parsed = _decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            await _send_json(send, 400, _refusal("Parse error: invalid JSON", jsonrpc.PARSE_ERROR))
            return
        except RecursionError:  # nested beyond what the decoder can follow
            await _send_json(send, 400, _refusal(too_nested))
            return
        # Counting brackets (strings included) bounds the depth from above, cheaply.
        if raw.count(b"[") + raw.count(b"{") > self.max_depth and too_deep(parsed, self.max_depth):
            await _send_json(send, 400, _refusal(too_nested))
            return
        problem = shape_error(parsed)
        if problem is not None:
            await _send_json(
                send, 400, jsonrpc.encode_error(None, jsonrpc.INVALID_REQUEST, f"Invalid Request: {problem}")
            )
            return
        scope[MESSAGE_KEY] = parsed
        await self.app(scope, replaying(raw, receive), send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read `body` once, then whatever the client sends next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
