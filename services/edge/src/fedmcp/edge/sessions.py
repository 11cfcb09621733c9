"""Handshake-era Streamable HTTP sessions that any edge replica can serve.

The SDK's session manager keeps sessions in memory and answers 404 for any id it
did not mint. This one, for an id it does not hold, looks the session up in the
region's sessions bucket and adopts it: a transport with that id and a connection
already initialized with the stored `initialize` params, as if the handshake had
happened here. The session's GET stream is served from the session feed (feed.py)
rather than from the transport, so a client that reconnects to another edge with
`Last-Event-ID` misses nothing. Only the principal that opened a session may use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from fedmcp.edge.clients import LIST_CHANGED, connection_of
from fedmcp.edge.event_store import MemoryEventStore
from fedmcp.edge.feed import LIST, Feed, FeedEvent
from fedmcp.edge.session_directory import SessionDirectory
from fedmcp.shared.frontsession import SessionRecord, event_id, feed_seq
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.runner import serve_connection
from mcp.server.streamable_http import (
    LAST_EVENT_ID_HEADER,
    MCP_SESSION_ID_HEADER,
    EventStore,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types import InitializeRequestParams
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

log = structlog.get_logger("fedmcp.edge.sessions")

Closed = Callable[[str], Awaitable[None]]


def not_found(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
    return JSONResponse(body, status_code=404)(scope, receive, send)


def notification(record: SessionRecord | None, event: FeedEvent) -> str | None:
    """The JSON-RPC notification `event` is for this session, if any: every list change; resource
    updates only for URIs the session subscribed to."""
    if event.kind == LIST:
        method = LIST_CHANGED.get(event.name)
        return json.dumps({"jsonrpc": "2.0", "method": method}) if method else None
    if record is not None and event.uri in record.subscriptions:
        return json.dumps({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": event.uri}})
    return None


class FederatedSessionManager(StreamableHTTPSessionManager):
    def __init__(
        self,
        app: Any,
        *,
        directory: SessionDirectory,
        feed: Feed,
        principal: Callable[[Request], str],
        closed: Closed,
        **options: Any,
    ) -> None:
        """`principal(request)`: who is asking; `closed(session_id)`: the session ended for good (the client's
        DELETE, or `expire`)."""
        super().__init__(app, **options)
        self.directory = directory
        self.feed = feed
        self.principal = principal
        self.closed = closed
        self._feeds: dict[str, MemoryObjectReceiveStream[FeedEvent]] = {}
        """The open GET stream of each session on this edge, by the feed stream it reads: closing that
        ends the response cleanly (its last chunk sent), where a cancel would cut the connection."""
        directory.on_removed(self._forget)

    async def _handle_stateful_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is None:
            await super()._handle_stateful_request(scope, receive, send)
            return
        record = await self.directory.fetch(session_id)
        if record is not None and record.principal != self.principal(request):
            log.warning("session used with another principal's credential", session=session_id[:64])
            await not_found(scope, receive, send)
            return
        last_event_id = request.headers.get(LAST_EVENT_ID_HEADER)
        if record is not None and scope["method"] == "GET" and (last_event_id is None or feed_seq(last_event_id)):
            await self._serve_feed(record, feed_seq(last_event_id), request, send)
            return
        local = self._server_instances.get(session_id)
        if record is not None and local is not None and local.idle_scope is not None and local.idle_scope.cancel_called:
            # The local copy is being dropped for idleness (LOCAL_IDLE), which the SDK would answer as a
            # terminated session: the session lives on in the directory, so a fresh copy serves it.
            await self._discard_session(session_id, local)
        if record is not None and session_id not in self._server_instances:
            await self._adopt(record)
        await super()._handle_stateful_request(scope, receive, send)
        if scope["method"] == "DELETE" and record is not None and session_id not in self._server_instances:
            await self._end(session_id)

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            # The SDK gives every transport the manager's one store; each gets its session's view
            # (event_store.py). tests/test_sse_polling.py fails if this stops taking effect.
            transport._event_store = self._events_of(transport.mcp_session_id)
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        """As the SDK's, except that a copy adopted since, under the same id, stays (the old copy's task
        discards it again as it ends)."""
        if self._server_instances.get(session_id) not in (None, transport):
            if not transport.is_terminated:
                with anyio.CancelScope(shield=True):
                    await transport.terminate()
            return
        await super()._discard_session(session_id, transport)

    def _events_of(self, session_id: str) -> EventStore | None:
        store = self.event_store
        return store.scoped(session_id) if isinstance(store, MemoryEventStore) else store

    @asynccontextmanager
    async def holding(self, session_id: str) -> AsyncIterator[None]:
        """Keep this edge's copy of a session while a call of it runs with no HTTP request open (its
        POST stream closed for SEP-1699 polling): the idle timeout would otherwise end the call.
        The call counts as one of the transport's requests in flight, which suspend its countdown
        (SDK 2.3 keeps that count private; tests/test_sse_polling.py fails if that changes)."""
        transport = self._server_instances.get(session_id)
        if transport is None or transport.idle_scope is None or not hasattr(transport, "_requests_in_flight"):
            yield
            return
        transport._requests_in_flight += 1
        transport.idle_scope.deadline = math.inf
        try:
            yield
        finally:
            transport._requests_in_flight -= 1
            if not transport._requests_in_flight:
                transport.idle_scope.deadline = anyio.current_time() + (self.session_idle_timeout or math.inf)

    async def expire(self, session_id: str) -> None:
        """End a session on every edge: its id answers 404 from now on, so the client re-initializes."""
        await self._forget(session_id)
        await self._end(session_id)

    async def _end(self, session_id: str) -> None:
        try:
            await self.directory.remove(session_id)
        finally:
            await self.closed(session_id)

    async def _forget(self, session_id: str) -> None:
        """The session ended on some edge: drop this edge's copy and end its GET stream."""
        self._end_feed(session_id)
        transport = self._server_instances.get(session_id)
        if transport is not None:
            await self._discard_session(session_id, transport)

    # -- adoption -------------------------------------------------------------
    async def _adopt(self, record: SessionRecord) -> None:
        try:
            client = InitializeRequestParams.model_validate(record.client)
        except ValidationError:
            log.warning("session record with unusable initialize params", session=record.id[:64])
            return
        async with self._session_creation_lock:
            if record.id in self._server_instances:
                return
            if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
                return  # answered 404: the client opens a new session, on an edge with room
            transport = StreamableHTTPServerTransport(
                mcp_session_id=record.id,
                is_json_response_enabled=self.json_response,
                event_store=self._events_of(record.id),
                security_settings=self.security_settings,
                retry_interval=self.retry_interval,
                idle_timeout=self.session_idle_timeout,
            )
            self._server_instances[record.id] = transport
        assert self._task_group is not None
        try:
            await self._task_group.start(self._serve_adopted, transport, record, client)
        except Exception:
            log.exception("adopting a session failed", session=record.id[:64])
            await self._discard_session(record.id, transport)
        log.info("session adopted", session=record.id[:64])

    async def _serve_adopted(
        self,
        transport: StreamableHTTPServerTransport,
        record: SessionRecord,
        client: InitializeRequestParams,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """What the SDK's manager runs per session, with the handshake already done."""
        try:
            async with transport.connect() as (read_stream, write_stream):
                dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(
                    read_stream, write_stream, inline_methods=frozenset({"initialize"})
                )
                connection = Connection.for_loop(dispatcher, session_id=record.id)
                connection.client_params = client
                connection.protocol_version = record.protocol_version
                connection.initialized.set()
                task_status.started()
                idle_scope = transport.idle_scope or anyio.CancelScope()
                with idle_scope:
                    await serve_connection(
                        self.app, dispatcher, connection=connection, lifespan_state=self._lifespan_state
                    )
        except Exception:
            log.exception("adopted session crashed", session=record.id[:64])
        finally:
            await self._discard_session(record.id, transport)

    # -- the GET stream ---------------------------------------------------------
    async def _serve_feed(self, record: SessionRecord, after: int | None, request: Request, send: Send) -> None:
        _, accepts_sse = check_accept_headers(request)
        if not accepts_sse:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "Not Acceptable: Client must accept text/event-stream"},
            }
            await JSONResponse(body, status_code=406)(request.scope, request.receive, send)
            return
        session_id = record.id
        self._end_feed(session_id)  # a client that reconnects replaces its older stream

        async def events() -> Any:
            async with self.feed.listen(after) as stream:
                self._feeds[session_id] = stream
                try:
                    async for event in stream:
                        message = notification(self.directory.records.get(session_id), event)
                        if message is not None:
                            yield {"id": event_id(event.seq), "event": "message", "data": message}
                except anyio.ClosedResourceError:
                    return  # ended by `_end_feed`
                finally:
                    if self._feeds.get(session_id) is stream:
                        del self._feeds[session_id]

        headers = {"Cache-Control": "no-cache, no-transform", MCP_SESSION_ID_HEADER: session_id}
        await EventSourceResponse(events(), headers=headers)(request.scope, request.receive, send)

    def _end_feed(self, session_id: str) -> None:
        stream = self._feeds.pop(session_id, None)
        if stream is not None:
            stream.close()


class SessionRecorder:
    """Server middleware: a handshake-era HTTP session's record is written as its `initialize` is
    answered, so the session id a client receives is already known to every edge."""

    def __init__(self, directory: SessionDirectory, principal: Callable[[Any], str]) -> None:
        self.directory = directory
        self.principal = principal

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "initialize" or not isinstance(ctx.request, Request) or not isinstance(result, dict):
            return result
        session_id = connection_of(ctx.session).session_id
        version = result.get("protocolVersion")
        if session_id and isinstance(version, str):
            client = {k: v for k, v in (ctx.params or {}).items() if k != "_meta"}
            client["protocolVersion"] = version
            record = SessionRecord(
                id=session_id, principal=self.principal(ctx.request), protocol_version=version, client=client
            )
            try:
                await self.directory.save(record)
            except Exception as exc:  # the session still works on this edge, as an SDK-only session
                log.warning("session record not stored", session=session_id[:64], error=repr(exc))
        return result
