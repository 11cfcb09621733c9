"""Requests to a stdio backing server as JSON-RPC bytes, beside the SDK's session on the same pipes.

On the hot path the SDK's client turns every request into pydantic models and
back on the way out (its writer task), and every response line into models on
the way in (its reader task, its dispatcher), only for the adapter to encode
the result again for the bus. The lane writes a request line straight to the
child's stdin and takes the line that answers it off stdout before the SDK's
reader sees it (stdio_lines.WholeLines hands it every chunk); the result stays
raw bytes (`msgspec.Raw`) all the way to the bus message.

Only responses to the lane's own ids (`fedmcp-<n>`, never used by the SDK,
whose ids are integers) are taken. Everything else the server writes, its
notifications and its requests to the client mid-call included, still reaches
the SDK's session and is handled as before. A response taken here can overtake
notifications the server wrote before it (they are still on their way through
the SDK), so calls that want their log messages or progress use the session.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteSendStream
from fedmcp.shared import jsonrpc, telemetry, timers
from mcp.shared.exceptions import MCPError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

ID_PREFIX = "fedmcp-"
_MARK = b'"' + ID_PREFIX.encode()


class _Error(msgspec.Struct):
    code: int
    message: str = ""
    data: Any = None


class _Reply(msgspec.Struct):
    id: Any = None
    method: Any = None
    result: msgspec.Raw = msgspec.Raw(b"")
    """Empty when the response has none."""
    error: _Error | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)
_encoder = msgspec.json.Encoder()
_tracer = trace.get_tracer("mcp-python-sdk")


class _Waiting:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: _Reply | None = None


class RawLane:
    def __init__(self, stdin: ByteSendStream) -> None:
        self._stdin = stdin
        self._ids = itertools.count(1)
        self._waiting: dict[str, _Waiting] = {}
        self.closed = False

    async def request(self, method: str, params: dict[str, Any] | None, *, timeout: float) -> msgspec.Raw:
        """Send one request and return its raw `result`; the server's error raised as MCPError.
        A timeout is the SDK's (REQUEST_TIMEOUT_SDK), a lost server its CONNECTION_CLOSED_SDK, and a
        request given up on is cancelled at the server (`notifications/cancelled`), as the SDK does."""
        if self.closed:
            raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed")
        request_id = f"{ID_PREFIX}{next(self._ids)}"
        if not telemetry.recording():
            return await self._exchange(request_id, method, params, timeout)
        target = (params or {}).get("name")
        # The SDK client's CLIENT span, so a trace looks the same whichever way the request went.
        with _tracer.start_as_current_span(
            f"MCP send {method}{f' {target}' if isinstance(target, str) else ''}",
            kind=SpanKind.CLIENT,
            attributes={"mcp.method.name": method, "jsonrpc.request.id": request_id},
        ) as span:
            try:
                return await self._exchange(request_id, method, params, timeout)
            except MCPError as exc:
                code = str(exc.error.code)
                span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                span.set_status(StatusCode.ERROR, exc.error.message)
                raise

    async def _exchange(
        self, request_id: str, method: str, params: dict[str, Any] | None, timeout: float
    ) -> msgspec.Raw:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        meta: dict[str, Any] = dict((params or {}).get("_meta") or {})
        telemetry.inject(meta)
        if meta:
            params = {**(params or {}), "_meta": meta}
        if params is not None:
            message["params"] = params
        waiting = self._waiting[request_id] = _Waiting()
        answered = False
        try:
            try:
                await self._stdin.send(_encoder.encode(message) + b"\n")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                self.close()
                raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed") from None
            await timers.wait_set(waiting.done, timeout)
            reply = waiting.reply
            if reply is None:
                if self.closed:
                    raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed")
                raise MCPError(code=jsonrpc.REQUEST_TIMEOUT_SDK, message=f"Timed out after {timeout}s")
            answered = True
            if reply.error is not None:
                raise MCPError(code=reply.error.code, message=reply.error.message, data=reply.error.data)
            if not reply.result:
                raise MCPError(code=jsonrpc.INTERNAL_ERROR, message="response without a result")
            return reply.result
        finally:
            del self._waiting[request_id]
            if not answered and not self.closed:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._cancel(request_id)

    async def _cancel(self, request_id: str) -> None:
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await self._stdin.send(_encoder.encode(note) + b"\n")

    def take(self, chunk: bytes) -> bytes:
        """`chunk` (whole lines) without the lines that answer this lane's requests, which are delivered."""
        if not self._waiting or _MARK not in chunk:
            return chunk
        kept: list[bytes] = []
        for line in chunk.split(b"\n"):
            if _MARK in line and self._deliver(line):
                continue
            kept.append(line)
        return b"\n".join(kept)

    def _deliver(self, line: bytes) -> bool:
        try:
            reply = _reply_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        waiting = self._waiting.get(reply.id) if isinstance(reply.id, str) and reply.method is None else None
        if waiting is None:
            return False
        waiting.reply = reply
        waiting.done.set()
        return True

    def close(self) -> None:
        """The server's stdout ended: every request waiting fails as a closed connection."""
        self.closed = True
        for waiting in self._waiting.values():
            waiting.done.set()


OPENED: ContextVar[Callable[[RawLane], None] | None] = ContextVar("fedmcp_raw_lane_opened", default=None)
"""Told of the lane of a stdio child spawned in this context (the connection that started it)."""
