"""The edge's side of the data plane: one JSON-RPC request over the bus to a server's adapters.

The edge subscribes once to `reply.<edge>.*` and gives every request its own
reply token, so an adapter can stream several frames back (accept, then
notifications, then the result) without a subscription per call.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog
from fedmcp.shared import chunks, headers, jsonrpc, metrics, telemetry, timers
from fedmcp.shared.inline import Inline
from fedmcp.shared.subjects import Subjects
from mcp.shared.exceptions import MCPError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import Span

log = structlog.get_logger("fedmcp.edge.upstream")

_NO_RESPONDERS = "503"


ACCEPT_GRACE = 0.5
"""Seconds an edge waits past the accept-by time before it sends a request again."""
LOST_GRACE = 0.5
"""Seconds an edge still waits for a call's frames after its adapter said it no longer holds the call."""


def _again(span: Span, server: str, event: str, reason: str) -> None:
    """A request sent once more: a span event on its PRODUCER span and a count."""
    span.add_event(event, {"reason": reason})
    metrics.RETRIES.labels(server, "failover" if event == "failover" else reason).inc()


class _NotAccepted(Exception):
    """No adapter took the request before its accept-by time: nothing ran, try again."""


class _NoResponders(Exception):
    """No adapter of the server is subscribed right now (none running, or between restarts)."""


class _Busy(Exception):
    """The adapter that got the request was at its concurrency limit."""


class _Lost(Exception):
    """The adapter that accepted the request is gone (or no longer holds it)."""


class _Gone(Exception):
    """The adapter does not hold the request's front session (any more)."""


class SessionLost(Exception):
    """A request of a front session pinned to one instance (affinity = "session") cannot be served
    there: the instance, or the backing session it held for the front session, is gone. Never
    sent elsewhere: another instance would serve it on a fresh backing session."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"server {server!r}: {reason}")
        self.server = server
        self.reason = reason


OnAccept = Callable[[str], Awaitable[None]]
"""Called with the instance that accepted a request (first accept only)."""
Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives a request-scoped notification (method, params) streamed back by the adapter."""
OnRequest = Callable[[str, dict[str, Any], str, "jsonrpc.RequestId | None"], Awaitable[Any]]
"""Handles a server-to-client request (method, params, answer subject, id). Returns None when it
answered on the subject itself, or a result that ends the front call (input_required)."""


class _Notification(msgspec.Struct):
    method: str
    params: dict[str, Any] = {}


_notification_decoder = msgspec.json.Decoder(_Notification)


@dataclass
class RawResult:
    """A result left undecoded (`Upstream.request(raw=True)`): its top-level members as raw JSON,
    views into the response's bytes, which it keeps alive."""

    fields: dict[str, msgspec.Raw]
    size: int
    """Bytes of the whole response."""


@dataclass
class Frame:
    kind: str
    data: bytes | bytearray
    instance: str | None = None
    reply: str | None = None


class _ReplyTokens:
    """Unguessable reply tokens (96 random bits each), drawn from the OS's random source a few
    hundred at a time: one `urandom` call per call was a syscall on the hot path."""

    __slots__ = ("_at", "_hex")
    BATCH = 256
    HEX_CHARS = 24

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def next(self) -> str:
        if self._at >= len(self._hex):
            self._hex, self._at = secrets.token_hex(self.BATCH * self.HEX_CHARS // 2), 0
        token = self._hex[self._at : self._at + self.HEX_CHARS]
        self._at += self.HEX_CHARS
        return token


class _Frames:
    """A call's frames in arrival order: put by the reply callback, taken by the call's task.
    (A deque and an event made only when the task has to wait: lighter than a memory stream per call.)"""

    __slots__ = ("_queued", "_waiter")
    LIMIT = 32

    def __init__(self) -> None:
        self._queued: deque[Frame] = deque()
        self._waiter: anyio.Event | None = None

    def put(self, frame: Frame) -> bool:
        """False when the call is not keeping up (the frame is dropped)."""
        if len(self._queued) >= self.LIMIT:
            return False
        self._queued.append(frame)
        if self._waiter is not None:
            self._waiter.set()
        return True

    async def take(self, timeout: float) -> Frame | None:
        """The next frame, or None when none came within `timeout` seconds."""
        if not self._queued:
            self._waiter = anyio.Event()
            try:
                await timers.wait_set(self._waiter, timeout)
            finally:
                self._waiter = None
            if not self._queued:
                return None
        return self._queued.popleft()


@dataclass
class _Call:
    frames: _Frames
    assembler: chunks.Assembler
    reply: str = ""
    instances: list[str] = field(default_factory=list)
    upload: list[bytes] = field(default_factory=list)
    """The request body in pieces, while an adapter may still pull it."""


class Upstream:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        edge_id: str,
        *,
        accept_timeout: float = 2.0,
        request_timeout: float = 60.0,
        max_payload_bytes: int = chunks.DEFAULT_LIMIT,
        probe_after: float = 2.0,
        overload_wait: float = 5.0,
    ) -> None:
        self.probe_after = probe_after
        """Silence after an accept that makes the edge ask whether the adapter still holds the call."""
        self.overload_wait = overload_wait
        """How long busy replicas are retried before the client gets an overload error."""
        self.max_payload_bytes = max_payload_bytes
        self.nc = nc
        self.bus = Inline.of(nc)
        """Requests and replies skip nats-py's per-message tasks (shared/inline.py)."""
        self.subjects = subjects
        self.edge_id = edge_id
        self.accept_timeout = accept_timeout
        self.request_timeout = request_timeout
        self._tokens = itertools.count(1)
        self._calls: dict[str, _Call] = {}
        self._reply_tokens = _ReplyTokens()
        self._abandoned: dict[str, str] = {}
        """Tokens of requests sent again after no accept, with their server, in case a late accept comes."""
        self._prefix_len = len(subjects.reply(edge_id, ""))

    async def start(self) -> None:
        await self.bus.subscribe(self.subjects.reply_all(self.edge_id), self._on_reply, repeated_headers=True)
        await self.nc.flush(timeout=5)

    def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[self._prefix_len :]
        call = self._calls.get(token)
        if call is None:
            server = self._abandoned.pop(token, None)
            if server is not None and (msg.headers or {}).get(headers.KIND) == headers.Kind.ACCEPT:
                # Accepted after the edge had sent the request again: make sure it does not run twice.
                self.bus.post(self.subjects.cancel(server), msg.subject.encode(), headers=headers.base())
            return  # a late frame of a call that already ended
        hdrs = msg.headers or {}
        if hdrs.get("Status") == _NO_RESPONDERS:
            frame = Frame(_NO_RESPONDERS, b"")
        elif not headers.speaks_our_protocol(hdrs):
            frame = Frame(
                headers.Kind.RESULT,
                jsonrpc.encode_error(
                    None, jsonrpc.BUS_PROTOCOL_MISMATCH, f"adapter answered in bus protocol {hdrs.get(headers.BUS)}"
                ),
            )
        else:
            kind = hdrs.get(headers.KIND, "")
            if kind == headers.Kind.PULL and msg.reply:
                self._serve_upload(call, msg.reply, hdrs.get(headers.CHUNK_INDEX, ""))
                return
            if kind == headers.Kind.CHUNK:
                # Assembled here, in NATS's order, not queued: a big result must not be dropped.
                call.assembler.add(msg.data, hdrs.get(headers.SIZE))
                return
            data = call.assembler.finish(msg.data)
            if call.assembler.overflow:
                limit = call.assembler.limit
                message = chunks.too_large_message(call.assembler.overflow, limit)
                data = jsonrpc.encode_error(None, jsonrpc.PAYLOAD_TOO_LARGE, message)
                call.assembler = chunks.Assembler(limit)
            frame = Frame(
                kind,
                data,
                hdrs.get(headers.INSTANCE),
                msg.reply or None,
            )
        if not call.frames.put(frame):
            log.warning("reply frame dropped: caller is not keeping up", subject=msg.subject)

    def _serve_upload(self, call: _Call, to: str, index: str) -> None:
        piece = call.upload[int(index)] if index.isdigit() and int(index) < len(call.upload) else b""
        self.bus.post(to, piece, headers=headers.base({headers.KIND: headers.Kind.CHUNK}))

    async def request(
        self,
        server: str,
        method: str,
        params: dict[str, Any] | None,
        *,
        front_version: str,
        timeout: float | None = None,
        log_level: str | None = None,
        on_notify: Notify | None = None,
        on_request: OnRequest | None = None,
        capabilities: dict[str, Any] | None = None,
        idempotent: bool = False,
        identity: str | None = None,
        session: str | None = None,
        instance: str | None = None,
        on_accept: OnAccept | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request to `server` and return the decoded `result` (a RawResult when `raw`);
        raise MCPError otherwise.

        Delivery: no accept in time -> sent again (nothing ran); a busy replica -> sent again
        until `overload_wait`; accepted and then lost -> sent again only when `idempotent`,
        so a call never runs twice because of the gateway.

        `session`: the front session of a server with affinity "session". Without `instance` the
        request opens the session's backing session on whichever replica takes it (`on_accept`
        learns which); with it, it goes to that instance only. Either way a lost instance or
        backing session raises SessionLost instead of a failover."""
        timeout = self.request_timeout if timeout is None else timeout
        hdrs = headers.base({headers.DEADLINE: headers.deadline_in(timeout), headers.FRONT_VERSION: front_version})
        if session is not None:
            hdrs[headers.SESSION] = session
        if idempotent:
            hdrs[headers.IDEMPOTENT] = "1"
        subject = self.subjects.rpc(server) if instance is None else self.subjects.rpc_pinned(server, instance)
        if identity is not None:
            hdrs[headers.IDENTITY] = identity
        if capabilities is not None:
            hdrs[headers.CLIENT_CAPABILITIES] = msgspec.json.encode(capabilities).decode()
        if log_level is not None and on_notify is not None:
            hdrs[headers.LOG_LEVEL] = log_level
        payload = jsonrpc.encode_request(method, params, next(self._tokens))
        if len(payload) > self.max_payload_bytes:
            raise MCPError(
                code=jsonrpc.PAYLOAD_TOO_LARGE, message=chunks.too_large_message(len(payload), self.max_payload_bytes)
            )
        pieces: list[bytes] = []
        if len(payload) > chunks.chunk_size(self.nc.max_payload):
            # Too big for one message: send the request empty and let the adapter that
            # takes it pull the pieces, so they reach that one adapter and nobody else.
            pieces = list(chunks.split(payload, chunks.chunk_size(self.nc.max_payload)))
            hdrs[headers.UPLOAD] = str(len(payload))
            payload = b""

        def send(reply: str) -> None:
            hdrs[headers.ACCEPT_BY] = headers.deadline_in(self.accept_timeout)
            self.bus.post(subject, payload, reply=reply, headers=hdrs)

        started = anyio.current_time()
        with telemetry.producer(telemetry.RPC_TEMPLATE, server) as span:
            telemetry.inject(hdrs)
            while True:
                left = timeout - (anyio.current_time() - started)
                try:
                    return await self._exchange(
                        server,
                        send,
                        left,
                        on_notify,
                        on_request,
                        accepted=False,
                        upload=pieces,
                        on_accept=on_accept,
                        raw=raw,
                    )
                except _Gone:
                    raise SessionLost(server, "the instance no longer holds this session") from None
                except _NotAccepted:
                    if instance is not None:
                        raise SessionLost(server, f"instance {instance!r} did not accept") from None
                    if left <= self.accept_timeout:
                        raise MCPError(
                            code=jsonrpc.UPSTREAM_UNAVAILABLE, message=f"no adapter of server {server!r} accepted"
                        ) from None
                    _again(span, server, "retry", "not accepted")
                except _NoResponders:
                    # An adapter may be restarting (rolling restart): keep trying for the accept window.
                    if anyio.current_time() - started > min(self.accept_timeout, timeout):
                        if instance is not None:
                            raise SessionLost(server, f"instance {instance!r} is gone") from None
                        raise MCPError(
                            code=jsonrpc.UPSTREAM_UNAVAILABLE, message=f"server {server!r} has no running adapter"
                        ) from None
                    _again(span, server, "retry", "no responders")
                    await anyio.sleep(0.05)
                except _Busy:
                    if anyio.current_time() - started > min(self.overload_wait, timeout):
                        raise MCPError(
                            code=jsonrpc.OVERLOADED, message=f"every replica of server {server!r} is busy; try later"
                        ) from None
                    _again(span, server, "retry", "busy")
                    await anyio.sleep(0.02)
                except _Lost:
                    if session is not None:
                        raise SessionLost(server, "the instance holding this session was lost mid-call") from None
                    if not idempotent or left <= 0:
                        raise MCPError(
                            code=jsonrpc.UPSTREAM_LOST,
                            message=f"the instance of server {server!r} running this call was lost; "
                            "it was not retried because it may not be safe to run twice",
                        ) from None
                    _again(span, server, "failover", "instance lost")

    async def resume(
        self,
        server: str,
        answer_to: str,
        answer: bytes,
        *,
        timeout: float | None = None,
        on_notify: Notify | None = None,
        on_request: OnRequest | None = None,
    ) -> Any:
        """Answer an adapter that is waiting mid-call, and take over the rest of that call."""
        timeout = self.request_timeout if timeout is None else timeout

        def send(reply: str) -> None:
            self.bus.post(answer_to, answer, headers=headers.base({headers.REPLY_TO: reply}))

        return await self._exchange(server, send, timeout, on_notify, on_request, accepted=True)

    def answer(self, subject: str, payload: bytes) -> None:
        self.bus.post(subject, payload, headers=headers.base())

    async def _exchange(
        self,
        server: str,
        send: Callable[[str], None],
        timeout: float,
        on_notify: Notify | None,
        on_request: OnRequest | None,
        *,
        accepted: bool,
        upload: list[bytes] | None = None,
        on_accept: OnAccept | None = None,
        raw: bool = False,
    ) -> Any:
        # Unguessable: adapters may publish to any reply subject, so a token must not be
        # derivable from one an adapter has seen (it could inject frames into other calls).
        token = self._reply_tokens.next()
        self._calls[token] = call = _Call(_Frames(), chunks.Assembler(self.max_payload_bytes))
        call.upload = upload or []
        reply = call.reply = self.subjects.reply(self.edge_id, token)
        finished = False
        try:
            send(reply)
            result = await self._await_result(server, call, timeout, on_notify, on_request, accepted, on_accept, raw)
            finished = True
            return result
        except _NotAccepted:
            finished = True
            self._abandoned[token] = server
            while len(self._abandoned) > 1024:
                self._abandoned.pop(next(iter(self._abandoned)))
            raise
        except (MCPError, _NoResponders, _Busy, _Lost, _Gone):
            finished = True  # nothing to cancel: the adapter is gone or never took it
            raise
        finally:
            del self._calls[token]
            if not finished:
                # The client went away or cancelled: tell whichever adapter holds the call.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self.nc.publish(self.subjects.cancel(server), reply.encode(), headers=headers.base())

    async def _await_result(
        self,
        server: str,
        call: _Call,
        timeout: float,
        on_notify: Notify | None,
        on_request: OnRequest | None,
        accepted: bool,
        on_accept: OnAccept | None = None,
        raw: bool = False,
    ) -> Any:
        deadline = anyio.current_time() + timeout
        while True:
            wait = deadline - anyio.current_time()
            # An accept sent just before the accept-by time is still on its way: allow for it.
            wait = min(wait, self.probe_after if accepted else self.accept_timeout + ACCEPT_GRACE)
            frame = await call.frames.take(wait)
            if frame is None:
                if not accepted and anyio.current_time() < deadline:
                    raise _NotAccepted
                if anyio.current_time() >= deadline:
                    raise MCPError(code=jsonrpc.UPSTREAM_TIMEOUT, message=f"server {server!r} did not answer in time")
                if await self._still_held(server, call):
                    continue
                # "Not held" may be "just answered": the adapter sent its last frames before it said so,
                # but they may still be queued for this call. Wait a moment for them before calling it lost.
                frame = await call.frames.take(LOST_GRACE)
                if frame is None:
                    raise _Lost
            if frame.kind == headers.Kind.BUSY:
                raise _Busy
            if frame.kind == _NO_RESPONDERS:
                raise _NoResponders
            if frame.kind == headers.Kind.GONE:
                raise _Gone
            if frame.kind == headers.Kind.ACCEPT:
                accepted = True
                if frame.instance:
                    call.instances.append(frame.instance)
                    if on_accept is not None and len(call.instances) == 1:
                        await on_accept(frame.instance)
                continue
            if frame.kind == headers.Kind.RESULT:
                if raw:
                    return RawResult(jsonrpc.result_fields_of(frame.data), len(frame.data))
                return jsonrpc.result_of(frame.data)
            if frame.kind == headers.Kind.NOTIFY and on_notify is not None:
                try:
                    note = _notification_decoder.decode(frame.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("unreadable notification frame dropped", server=server)
                    continue
                await on_notify(note.method, note.params)
            if frame.kind == headers.Kind.REQUEST and frame.reply:
                interrupt = await self._server_request(frame, on_request)
                if interrupt is not None:
                    return interrupt

    async def _still_held(self, server: str, call: _Call) -> bool:
        """After a silence: does the adapter that accepted still hold the call?"""
        if not call.instances:
            return True  # a resumed call: nobody to ask, wait for the deadline
        try:
            answer = await self.nc.request(
                self.subjects.ping(server, call.instances[-1]), call.reply.encode(), timeout=1.0, headers=headers.base()
            )
        except Exception:  # no responders or no answer: the instance is gone
            return False
        return answer.data == b"1"

    async def _server_request(self, frame: Frame, on_request: OnRequest | None) -> Any:
        try:
            request = jsonrpc.decode_request(frame.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            request = jsonrpc.Request(method="")
        assert frame.reply is not None
        if on_request is None or not request.method:
            self.answer(
                frame.reply,
                jsonrpc.encode_error(request.id, jsonrpc.METHOD_NOT_FOUND, "the client cannot take this request"),
            )
            return None
        return await on_request(request.method, request.params or {}, frame.reply, request.id)
