"""The handshake-era hot path: a plain `tools/call` or `resources/read` of a Streamable HTTP session,
served without the SDK's session machinery.

Most clients in use speak the handshake era, and for each of their calls the SDK runs its session
manager, the session's transport (an SSE response with its own task group, memory streams), the
server runner and a request context: four times the edge's CPU of a 2026-07-28 call on the fast lane
(fastlane.py). The session itself is a record every edge holds (session_directory.py), so this lane
serves the call from the record: who may use the session, its protocol version, the client's
capabilities, its log level.

It answers as the SDK's transport does, on the wire and in the event store: an SSE stream with the
priming event (2025-11-25: an id and a retry hint, so that a client cut off can resume with
`Last-Event-ID`), the call's log messages and its questions to the client (a handshake-era backing
server's sampling, elicitation, roots) as events, then the response; every event stored under the
session's view of the store (event_store.py) with the request's id as the stream, as the SDK stores
them. A client that goes away does not cancel the call (handshake-era semantics): it runs on, its
events are stored, and a resume (a GET with `Last-Event-ID`) waits here for its end and replays it.
The client's answer to a question (a POST of a JSON-RPC response) and its `notifications/cancelled`
for the call come back here (202, as the SDK answers them).

It takes a request only in the common case: a known session of this principal whose version the
request names; one `tools/call` or `resources/read` without a progress token or extra params; a tool
the caller may use without consent (a resource it may see) on a server without session affinity; no SEP-1699 polling configured and no spans
recorded (those keep the SDK's path, which has them). Anything else goes on to the SDK unchanged.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import anyio
import mcp_types as types
import structlog
from fedmcp.edge.auth import SCOPE_KEY
from fedmcp.edge.clients import DEFAULT_LEVEL
from fedmcp.edge.event_store import MemoryEventStore
from fedmcp.edge.fastlane import (
    CALL,
    SESSION_HEADER,
    SIMPLE_PARAMS,
    WATCH_AFTER,
    LaneRules,
    Watchers,
    accepts,
    trace_parent,
)
from fedmcp.edge.guard import MESSAGE_KEY
from fedmcp.edge.server import FederatedServer, Front, forward_params_of, server_request
from fedmcp.edge.session_directory import SessionDirectory
from fedmcp.shared import jsonrpc, telemetry
from fedmcp.shared.frontsession import SessionRecord
from fedmcp.shared.policy import Principal
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import NAME_BEARING_METHODS
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, is_version_at_least
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("fedmcp.edge.session_lane")

PING_INTERVAL = 15.0
"""Seconds between keepalive comments on a long call's stream (sse_starlette's default, as the SDK's)."""
PRIMING_FROM = "2025-11-25"
"""The first version whose clients take the priming event (an id, no data), as the SDK decides it."""
ASK_PREFIX = "fedmcp-ask-"
"""Ids of the lane's requests to clients (the SDK's own are integers)."""
_ACCEPTED = [(b"content-type", b"application/json"), (b"content-length", b"0")]


class _Call:
    """One call on the lane: its stream's events (stored, and written while the client is there)."""

    def __init__(self, session: str, request_id: str | int, send: Send, store: EventStore, retry_ms: int) -> None:
        self.session = session
        self.stream = str(request_id)
        self.send = send
        self.store = store
        self.retry_ms = retry_ms
        self.started = False
        self.gone = False
        """The client went away: events are stored, not written."""
        self.held: list[bytes] = []
        """Events not yet written (a quick call's go out with its response, in one write)."""
        self.done = anyio.Event()
        self.scope = anyio.CancelScope()
        self.asks: dict[str, tuple[anyio.Event, list[dict[str, Any]]]] = {}

    async def prime(self, version: str) -> None:
        """The stream's first event (2025-11-25): the priming event, stored first."""
        if is_version_at_least(version, PRIMING_FROM):
            event_id = await self.store.store_event(self.stream, None)
            self.held.append(f"id: {event_id}\r\ndata: \r\nretry: {self.retry_ms}\r\n\r\n".encode())

    async def event(self, message: types.JSONRPCMessage, flush: bool = True) -> None:
        event_id = await self.store.store_event(self.stream, message)
        self.held.append(_sse_event(event_id, message))
        if flush:
            await self.flush(more=True)

    async def flush(self, *, more: bool) -> None:
        if self.gone:
            self.held.clear()
            return
        body, self.held = b"".join(self.held), []
        try:
            if not self.started:
                self.started = True
                await self.send(
                    {"type": "http.response.start", "status": 200, "headers": _stream_headers(self.session)}
                )
            await self.send({"type": "http.response.body", "body": body, "more_body": more})
        except OSError:  # the client is gone (uvicorn raises for a closed transport): the call runs on
            self.gone = True


class _Channel:
    """The back channel of a call on the lane: its own stream."""

    def __init__(self, lane: SessionLane, call: _Call) -> None:
        self.lane = lane
        self.call = call

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if method != "notifications/message":
            return  # progress is not asked for on the lane (the SDK's path reports it)
        await self.call.event(types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params))

    async def ask(self, method: str, params: dict[str, Any]) -> Any:
        request = server_request(method, params)  # checked as the SDK's session checks it
        ask_id = f"{ASK_PREFIX}{next(self.lane._ask_ids)}"
        answered = anyio.Event()
        answer: list[dict[str, Any]] = []
        self.call.asks[ask_id] = (answered, answer)
        try:
            dumped = request.model_dump(by_alias=True, mode="json", exclude_none=True)
            await self.call.event(types.JSONRPCRequest(jsonrpc="2.0", id=ask_id, **dumped))
            await answered.wait()
        finally:
            del self.call.asks[ask_id]
        message = answer[0]
        error = message.get("error")
        if error is None:
            return message.get("result")
        try:
            parsed = types.ErrorData.model_validate(error)
        except ValidationError:
            parsed = types.ErrorData(code=jsonrpc.INTERNAL_ERROR, message=f"malformed error answering {method}")
        raise MCPError(code=parsed.code, message=parsed.message, data=parsed.data)


class SessionLane:
    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        federated: FederatedServer,
        rules: LaneRules,
        directory: SessionDirectory,
        events: MemoryEventStore,
        retry_ms: int,
        watchers: Watchers,
    ) -> None:
        self.app = app
        self.path = path
        self.federated = federated
        self.rules = rules
        self.directory = directory
        self.events = events
        self.retry_ms = retry_ms
        self.watchers = watchers
        self._calls: dict[tuple[str, str | int], _Call] = {}
        self._ask_ids = itertools.count(1)
        self._caps: dict[str, tuple[SessionRecord, dict[str, Any]]] = {}
        directory.on_removed(self._session_ended)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["path"] == self.path and self.watchers.group is not None:
            try:
                handler = self._route(scope)
            except Exception:  # whatever puzzles the lane is the SDK path's to answer
                log.debug("session lane passed on a request it could not read", exc_info=True)
        if handler is None:
            await self.app(scope, receive, send)
            return
        await handler(scope, receive, send)

    # -- which requests are the lane's ----------------------------------------------------------
    def _route(self, scope: Scope) -> ASGIApp | None:
        """The lane's handler for this request, or None: the SDK's path takes it."""
        headers = _headers(scope)
        session_id = headers.get(SESSION_HEADER)
        if session_id is None:
            return None
        record = self.directory.records.get(session_id)
        found = scope.get(SCOPE_KEY)
        principal = found if isinstance(found, Principal) else self.federated.local_principal
        if record is None or record.principal != principal.id:
            return None
        version = headers.get(b"mcp-protocol-version")
        if version != record.protocol_version or version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        if scope["method"] == "GET":
            return self._resuming(session_id, headers.get(b"last-event-id"))
        message = scope.get(MESSAGE_KEY)
        if scope["method"] != "POST" or not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return None
        content_type = headers.get(b"content-type", "")
        if not content_type.lower().startswith("application/json") or not accepts(headers.get(b"accept", "")):
            return None
        if "method" not in message:
            return self._answer_of(session_id, message)
        if message["method"] == "notifications/cancelled":
            return self._cancel_of(session_id, message)
        plan = self._plan(message)
        if plan is None or (session_id, plan[0]) in self._calls:
            return None  # (a request id still in flight: the SDK's path says what that is)
        admitted = self.rules.admit(message["method"], plan[1], scope, mirrored=False)
        if admitted is None:
            return None
        return functools.partial(self._serve, record, principal, admitted[1], plan)

    def _capabilities(self, record: SessionRecord) -> dict[str, Any]:
        """The client's capabilities as the SDK's session holds them (its model's dump, as
        `server.client_capabilities` gives them the SDK's path), worked out once per record."""
        known = self._caps.get(record.id)
        if known is None or known[0] is not record:
            declared = record.client.get("capabilities")
            try:
                caps = types.ClientCapabilities.model_validate(declared if isinstance(declared, dict) else {})
                dumped = caps.model_dump(mode="json", by_alias=True, exclude_none=True)
            except ValidationError:
                dumped = {}
            if len(self._caps) >= 4096:
                self._caps.clear()
            known = self._caps[record.id] = (record, dumped)
        return known[1]

    def _plan(self, message: dict[str, Any]) -> tuple[str | int, str, dict[str, Any], str] | None:
        method, request_id, params = message["method"], message.get("id"), message.get("params")
        if method not in SIMPLE_PARAMS or self.federated.sse_poll_after is not None or telemetry.recording():
            return None
        if not isinstance(request_id, str | int) or isinstance(request_id, bool) or not isinstance(params, dict):
            return None
        name, meta = params.get(NAME_BEARING_METHODS[method]), params.get("_meta")
        if not SIMPLE_PARAMS[method].issuperset(params) or not isinstance(name, str):
            return None
        if not isinstance(params.get("arguments"), dict | None) or not isinstance(meta, dict | None):
            return None
        if meta is not None and "progressToken" in meta:
            return None
        return request_id, name, params, method

    # -- serving a call -------------------------------------------------------------------------
    async def _serve(
        self,
        record: SessionRecord,
        principal: Principal,
        route: Any,
        plan: tuple[str | int, str, dict[str, Any], str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request_id, name, params, method = plan
        key = (record.id, request_id)
        call = self._calls[key] = _Call(record.id, request_id, send, self.events.scoped(record.id), self.retry_ms)
        try:
            await call.prime(record.protocol_version)
            front = Front(
                record.protocol_version,
                principal,
                self._capabilities(record),
                record.log_level or DEFAULT_LEVEL,
                channel=_Channel(self, call),
            )
            forwarded = forward_params_of(params)
            if method == CALL:
                forwarded["name"] = route.name
            message: types.JSONRPCMessage | None = None
            # Past WATCH_AFTER the held priming event goes out, and a watcher pings the stream and notes the
            # client leaving (which stops the writing, not the call).
            keep_alive = functools.partial(self._keep_alive, call, receive)
            with call.scope, self.watchers.after(WATCH_AFTER, keep_alive), trace_parent(params.get("_meta")):
                try:
                    await self.directory.touch(record.id)  # the session's record kept alive, as the SDK's path does
                    if method == CALL:
                        result = await self.federated.forward_call(front, route, name, forwarded)
                    else:
                        result = await self.federated.forward_read(front, route, forwarded)
                    version = record.protocol_version
                    shaped = self.rules.shape(version, method, self.rules.decoded(version, result))
                    message = types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=shaped)
                except Exception as exc:
                    message = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=_error_data(exc))
            if message is not None:
                await call.event(message, flush=False)
            # Cancelled (by the client's notifications/cancelled, or its session's end): the stream
            # closes without a response, as the SDK's transport closes an unanswered request's.
            with anyio.CancelScope(shield=True):
                await call.flush(more=False)
        finally:
            call.done.set()
            del self._calls[key]

    async def _keep_alive(self, call: _Call, receive: Receive) -> None:
        await call.flush(more=True)
        while not call.gone:
            message: Message | None = None
            with anyio.move_on_after(PING_INTERVAL):
                message = await receive()
            if message is None:
                call.held.append(b": ping\r\n\r\n")
                await call.flush(more=True)
            elif message["type"] == "http.disconnect":
                call.gone = True

    # -- what the client sends back -------------------------------------------------------------
    def _answer_of(self, session_id: str, message: dict[str, Any]) -> ASGIApp | None:
        """The client's answer to one of the lane's questions: to the call that asked."""
        ask_id = message.get("id")
        if (
            not isinstance(ask_id, str)
            or not ask_id.startswith(ASK_PREFIX)
            or not ("result" in message or "error" in message)
        ):
            return None
        asking = next((c for c in self._calls.values() if c.session == session_id and ask_id in c.asks), None)
        if asking is None:
            return None
        answered, answer = asking.asks[ask_id]

        async def accept(scope: Scope, receive: Receive, send: Send) -> None:
            answer.append(message)
            answered.set()
            await _accepted(session_id, send)

        return accept

    def _cancel_of(self, session_id: str, message: dict[str, Any]) -> ASGIApp | None:
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        call = self._calls.get((session_id, request_id)) if isinstance(request_id, str | int) else None
        if call is None:
            return None

        async def cancel(scope: Scope, receive: Receive, send: Send) -> None:
            call.scope.cancel()
            await _accepted(session_id, send)

        return cancel

    def _resuming(self, session_id: str, last_event_id: str | None) -> ASGIApp | None:
        """A GET resuming the stream of a call still running here (a finished one's the SDK's transport
        replays from the store)."""
        stream = self.events.stream_of(last_event_id) if last_event_id is not None else None
        prefix = f"{session_id}/"
        if stream is None or not stream.startswith(prefix):
            return None
        request_id = stream[len(prefix) :]
        call = next((c for c in self._calls.values() if c.session == session_id and c.stream == request_id), None)
        if call is None:
            return None

        async def resume(scope: Scope, receive: Receive, send: Send) -> None:
            """The stream answers at once and pings while the call runs (a client waiting for headers
            would give up); at the call's end, what came after `last_event_id` is replayed from the store
            and the stream ends, as the call's own stream would have."""
            assert last_event_id is not None
            await send({"type": "http.response.start", "status": 200, "headers": _stream_headers(session_id)})
            try:
                while not call.done.is_set():
                    with anyio.move_on_after(PING_INTERVAL):
                        await call.done.wait()
                    if not call.done.is_set():
                        await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                replayed: list[bytes] = []

                async def collect(event: EventMessage) -> None:
                    replayed.append(_sse_event(event.event_id, event.message))

                await self.events.replay_events_after(last_event_id, collect)
                await send({"type": "http.response.body", "body": b"".join(replayed), "more_body": False})
            except OSError:  # the client left again; the store still holds the stream
                pass

        return resume

    async def _session_ended(self, session_id: str) -> None:
        for call in list(self._calls.values()):
            if call.session == session_id:
                call.scope.cancel()


def _stream_headers(session_id: str) -> list[tuple[bytes, bytes]]:
    """A POST stream's response headers, as the SDK's transport sends them."""
    return [
        (b"cache-control", b"no-cache, no-transform"),
        (b"connection", b"keep-alive"),
        (b"content-type", b"text/event-stream"),
        (b"mcp-session-id", session_id.encode()),
        (b"x-accel-buffering", b"no"),
    ]


def _sse_event(event_id: str | None, message: types.JSONRPCMessage) -> bytes:
    """One stored message on the wire, as sse_starlette frames the SDK's events."""
    data = message.model_dump_json(by_alias=True, exclude_unset=True)
    head = f"id: {event_id}\r\n" if event_id else ""
    return f"{head}event: message\r\ndata: {data}\r\n\r\n".encode()


def _headers(scope: Scope) -> dict[bytes, str]:
    return {key: value.decode("latin-1") for key, value in scope["headers"]}


async def _accepted(session_id: str, send: Send) -> None:
    headers = [*_ACCEPTED, (b"mcp-session-id", session_id.encode())]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_data(exc: Exception) -> types.ErrorData:
    """As the SDK's dispatcher answers a handshake-era handler's exception."""
    error = handler_exception_to_error_data(exc)
    if error is not None:
        return error
    log.exception("a call on the session lane raised")
    return types.ErrorData(code=0, message=str(exc))
