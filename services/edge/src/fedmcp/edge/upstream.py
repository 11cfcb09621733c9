"""The edge's side of the data plane: one JSON-RPC request over the bus to a server's adapters.

The edge subscribes once to `reply.<edge>.*` and gives every request its own
reply token, so an adapter can stream several frames back (accept, then
notifications, then the result) without a subscription per call.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fedmcp.shared import chunks, headers, jsonrpc, telemetry
from fedmcp.shared.subjects import Subjects
from mcp.shared.exceptions import MCPError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = structlog.get_logger("fedmcp.edge.upstream")

_NO_RESPONDERS = "503"


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
class Frame:
    kind: str
    data: bytes | bytearray
    instance: str | None = None
    reply: str | None = None


@dataclass
class _Call:
    send: MemoryObjectSendStream[Frame]
    receive: MemoryObjectReceiveStream[Frame]
    assembler: chunks.Assembler
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
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.nc = nc
        self.subjects = subjects
        self.edge_id = edge_id
        self.accept_timeout = accept_timeout
        self.request_timeout = request_timeout
        self._tokens = itertools.count(1)
        self._calls: dict[str, _Call] = {}
        self._prefix_len = len(subjects.reply(edge_id, ""))

    async def start(self) -> None:
        await self.nc.subscribe(self.subjects.reply_all(self.edge_id), cb=self._on_reply)
        await self.nc.flush(timeout=5)

    async def _on_reply(self, msg: Msg) -> None:
        call = self._calls.get(msg.subject[self._prefix_len :])
        if call is None:
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
                await self._serve_upload(call, msg.reply, hdrs.get(headers.CHUNK_INDEX, ""))
                return
            if kind == headers.Kind.CHUNK:
                # Assembled here, in NATS's order, not queued: a big result must not be dropped.
                call.assembler.add(msg.data)
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
        try:
            call.send.send_nowait(frame)
        except anyio.WouldBlock:
            log.warning("reply frame dropped: caller is not keeping up", subject=msg.subject)

    async def _serve_upload(self, call: _Call, to: str, index: str) -> None:
        piece = call.upload[int(index)] if index.isdigit() and int(index) < len(call.upload) else b""
        await self.nc.publish(to, piece, headers=headers.base({headers.KIND: headers.Kind.CHUNK}))

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
    ) -> Any:
        """Send one request to `server` and return the decoded `result`; raise MCPError otherwise."""
        timeout = self.request_timeout if timeout is None else timeout
        hdrs = headers.base({headers.DEADLINE: headers.deadline_in(timeout), headers.FRONT_VERSION: front_version})
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

        async def send(reply: str) -> None:
            await self.nc.publish(self.subjects.rpc(server), payload, reply=reply, headers=hdrs)

        with telemetry.producer(telemetry.RPC_TEMPLATE, server):
            telemetry.inject(hdrs)
            return await self._exchange(server, send, timeout, on_notify, on_request, accepted=False, upload=pieces)

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

        async def send(reply: str) -> None:
            await self.nc.publish(answer_to, answer, headers=headers.base({headers.REPLY_TO: reply}))

        return await self._exchange(server, send, timeout, on_notify, on_request, accepted=True)

    async def answer(self, subject: str, payload: bytes) -> None:
        await self.nc.publish(subject, payload, headers=headers.base())

    async def _exchange(
        self,
        server: str,
        send: Callable[[str], Awaitable[None]],
        timeout: float,
        on_notify: Notify | None,
        on_request: OnRequest | None,
        *,
        accepted: bool,
        upload: list[bytes] | None = None,
    ) -> Any:
        token = str(next(self._tokens))
        send_stream, receive = anyio.create_memory_object_stream[Frame](32)
        self._calls[token] = call = _Call(send_stream, receive, chunks.Assembler(self.max_payload_bytes))
        call.upload = upload or []
        reply = self.subjects.reply(self.edge_id, token)
        finished = False
        try:
            await send(reply)
            result = await self._await_result(server, call, timeout, on_notify, on_request, accepted)
            finished = True
            return result
        except MCPError:
            finished = True
            raise
        finally:
            del self._calls[token]
            send_stream.close()
            receive.close()
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
    ) -> Any:
        deadline = anyio.current_time() + timeout
        while True:
            wait = deadline - anyio.current_time()
            if not accepted:
                wait = min(wait, self.accept_timeout)
            frame: Frame | None = None
            with anyio.move_on_after(max(wait, 0)):
                frame = await call.receive.receive()
            if frame is None:
                if not accepted and anyio.current_time() < deadline:
                    raise MCPError(
                        code=jsonrpc.UPSTREAM_UNAVAILABLE,
                        message=f"no adapter of server {server!r} accepted the request",
                    )
                raise MCPError(code=jsonrpc.UPSTREAM_TIMEOUT, message=f"server {server!r} did not answer in time")
            if frame.kind == _NO_RESPONDERS:
                raise MCPError(code=jsonrpc.UPSTREAM_UNAVAILABLE, message=f"server {server!r} has no running adapter")
            if frame.kind == headers.Kind.ACCEPT:
                accepted = True
                if frame.instance:
                    call.instances.append(frame.instance)
                continue
            if frame.kind == headers.Kind.RESULT:
                return _result_of(frame.data)
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

    async def _server_request(self, frame: Frame, on_request: OnRequest | None) -> Any:
        try:
            request = jsonrpc.decode_request(frame.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            request = jsonrpc.Request(method="")
        assert frame.reply is not None
        if on_request is None or not request.method:
            await self.answer(
                frame.reply,
                jsonrpc.encode_error(request.id, jsonrpc.METHOD_NOT_FOUND, "the client cannot take this request"),
            )
            return None
        return await on_request(request.method, request.params or {}, frame.reply, request.id)


def _result_of(data: bytes | bytearray) -> Any:
    try:
        response = jsonrpc.decode_response(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MCPError(code=jsonrpc.INTERNAL_ERROR, message="adapter sent an unreadable response") from exc
    if response.error is not None:
        err = response.error
        raise MCPError(code=err.code, message=err.message, data=err.data)
    return response.result if response.result is not None else {}
