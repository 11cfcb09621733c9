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
the SDK's session and is handled as before, except log messages (`on_log`): a
response taken here would overtake one still on its way through the SDK, so while
requests are pending the lane hands them on itself, in the order they came. Calls
that want progress use the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteSendStream
from fedmcp.shared import jsonrpc, telemetry
from mcp.shared.exceptions import MCPError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

ID_PREFIX = "fedmcp-"
_MARK = b'"' + ID_PREFIX.encode()
_LOG_MARK = b'"notifications/message"'


class ReplyError(msgspec.Struct):
    code: int
    message: str = ""
    data: Any = None


class Reply(msgspec.Struct):
    """A JSON-RPC message as far as a lane reads it: a response (raw result or error), or a message with a method."""

    id: Any = None
    method: Any = None
    result: msgspec.Raw = msgspec.Raw(b"")
    """Empty when the response has none."""
    error: ReplyError | None = None

    def outcome(self) -> msgspec.Raw | MCPError:
        """The raw result, or the error this response carries."""
        if self.error is not None:
            return MCPError(code=self.error.code, message=self.error.message, data=self.error.data)
        if not self.result:
            return MCPError(code=jsonrpc.INTERNAL_ERROR, message="response without a result")
        return self.result


reply_decoder = msgspec.json.Decoder(Reply)
_encoder = msgspec.json.Encoder()
_tracer = trace.get_tracer("mcp-python-sdk")


Outcome = msgspec.Raw | MCPError | None
"""How a request ended: its raw `result`, the error (the server's, a timeout, a lost server), or None
when its owner gave it up (`Pending.cancel`)."""

WRITE_BUFFER_LIMIT = 1 << 20
"""Bytes the child's stdin may hold unread before `submit` is refused (`request` then waits for the pipe)."""


class Pending:
    """A request written to the server and not yet answered."""

    __slots__ = ("done", "id", "lane", "timer")

    def __init__(self, lane: RawLane, request_id: str, done: Callable[[Outcome], None]) -> None:
        self.lane = lane
        self.id = request_id
        self.done = done
        self.timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        """Give the request up: the server is told (`notifications/cancelled`); `done` gets None."""
        self.lane._finish(self, None, tell_server=True)


class RawLane:
    def __init__(self, stdin: ByteSendStream) -> None:
        self._writer: asyncio.StreamWriter | None = getattr(stdin, "_stream", None)
        """asyncio's writer under anyio's stream (a write needs no await: `submit` runs in a callback)."""
        self._ids = itertools.count(1)
        self._pending: dict[str, Pending] = {}
        self._outgoing: list[bytes] = []
        """Lines written in this loop iteration, to go to the pipe in one write at its end (`_write`)."""
        self.closed = False
        self.on_log: Callable[[bytes], bool] | None = None
        """Offered each log message line while requests are pending; True: it was delivered (and is taken
        out). A log message a server writes before a response must reach the bus before it, and a
        response taken here would overtake one left to the SDK's reader."""

    def writable(self) -> bool:
        """Whether `submit` may be used now (the pipe open, and not backed up)."""
        writer = self._writer
        return (
            not self.closed
            and writer is not None
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() < WRITE_BUFFER_LIMIT
        )

    def submit(
        self, method: str, params: dict[str, Any] | None, *, timeout: float, done: Callable[[Outcome], None]
    ) -> Pending:
        """Write one request now (check `writable()` first); `done` is called once, later, with its outcome.
        A timeout is the SDK's (REQUEST_TIMEOUT_SDK) and the server is told to cancel, as the SDK does;
        a lost server is its CONNECTION_CLOSED_SDK. The current trace context goes in `_meta`."""
        assert self._writer is not None
        request_id = f"{ID_PREFIX}{next(self._ids)}"
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        meta: dict[str, Any] = dict((params or {}).get("_meta") or {})
        telemetry.inject(meta)
        if meta:
            params = {**(params or {}), "_meta": meta}
        if params is not None:
            message["params"] = params
        pending = self._pending[request_id] = Pending(self, request_id, done)
        pending.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, pending, timeout)
        self._write(_encoder.encode(message) + b"\n")
        return pending

    def _write(self, line: bytes) -> None:
        """Queue `line` for the pipe: the requests a bus read brings in (several under load) go out in
        one write, so the adapter makes one syscall and the server one read for all of them."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(line)

    def _flush(self) -> None:
        lines, self._outgoing = self._outgoing, []
        if self.closed or self._writer is None:
            return
        try:
            self._writer.write(b"".join(lines))
        except (RuntimeError, OSError):  # the pipe is gone: fail everything waiting
            self.close()

    async def request(self, method: str, params: dict[str, Any] | None, *, timeout: float) -> msgspec.Raw:
        """Send one request and return its raw `result`; errors as `submit` gives them, raised as MCPError;
        a request given up on (cancelled) is cancelled at the server."""
        if self.closed or self._writer is None:
            raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed")
        with client_span(method, params):
            return await self._exchange(method, params, timeout)

    async def _exchange(self, method: str, params: dict[str, Any] | None, timeout: float) -> msgspec.Raw:
        if not self.writable() and not self.closed and self._writer is not None:
            with contextlib.suppress(RuntimeError, OSError):
                await self._writer.drain()  # the server is not reading: wait for it, as the SDK's writer does
        if not self.writable():
            raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed")
        answered = anyio.Event()
        outcomes: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            outcomes.append(outcome)
            answered.set()

        pending = self.submit(method, params, timeout=timeout, done=done)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("jsonrpc.request.id", pending.id)
        try:
            await answered.wait()
        finally:
            if not outcomes:
                pending.cancel()
        outcome = outcomes[0]
        if isinstance(outcome, MCPError):
            raise outcome
        assert outcome is not None
        return outcome

    def _timed_out(self, pending: Pending, timeout: float) -> None:
        pending.timer = None
        error = MCPError(code=jsonrpc.REQUEST_TIMEOUT_SDK, message=f"Timed out after {timeout}s")
        self._finish(pending, error, tell_server=True)

    def _finish(self, pending: Pending, outcome: Outcome, *, tell_server: bool = False) -> None:
        if self._pending.pop(pending.id, None) is None:
            return  # already finished
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if tell_server and not self.closed and self._writer is not None:
            note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": pending.id}}
            self._write(_encoder.encode(note) + b"\n")
        pending.done(outcome)

    def take(self, chunk: bytes) -> bytes:
        """`chunk` (whole lines) without the lines that answer this lane's requests, which are delivered."""
        if not self._pending:
            return chunk
        answers = _MARK in chunk
        on_log = self.on_log if _LOG_MARK in chunk else None
        if not answers and on_log is None:
            return chunk
        if answers and on_log is None and chunk.find(b"\n") == len(chunk) - 1:
            # One whole line, the common case and the one of a large result: delivered from the chunk
            # itself, not from a copy made by splitting it.
            return b"" if self._deliver(memoryview(chunk)[:-1]) else chunk
        kept: list[bytes] = []
        for line in chunk.split(b"\n"):
            if answers and _MARK in line and self._deliver(line):
                continue
            if on_log is not None and _LOG_MARK in line and on_log(line):
                continue
            kept.append(line)
        return b"\n".join(kept)

    def _deliver(self, line: bytes | memoryview) -> bool:
        try:
            reply = reply_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        pending = self._pending.get(reply.id) if isinstance(reply.id, str) and reply.method is None else None
        if pending is None:
            return False
        self._finish(pending, reply.outcome())
        return True

    def close(self) -> None:
        """The server's stdout ended: every request waiting fails as a closed connection."""
        self.closed = True
        for pending in list(self._pending.values()):
            self._finish(pending, MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="Connection closed"))


OPENED: ContextVar[Callable[[RawLane], None] | None] = ContextVar("fedmcp_raw_lane_opened", default=None)
"""Told of the lane of a stdio child spawned in this context (the connection that started it)."""


@contextlib.contextmanager
def client_span(method: str, params: dict[str, Any] | None) -> Iterator[None]:
    """The SDK client's CLIENT span around a request a lane sends, so that a trace looks the same whichever
    way the request went (nothing when no spans are recorded)."""
    if not telemetry.recording():
        yield
        return
    target = (params or {}).get("name")
    with _tracer.start_as_current_span(
        f"MCP send {method}{f' {target}' if isinstance(target, str) else ''}",
        kind=SpanKind.CLIENT,
        attributes={"mcp.method.name": method},
    ) as span:
        try:
            yield
        except MCPError as exc:
            code = str(exc.error.code)
            span.set_attributes({"error.type": code, "rpc.response.status_code": code})
            span.set_status(StatusCode.ERROR, exc.error.message)
            raise
