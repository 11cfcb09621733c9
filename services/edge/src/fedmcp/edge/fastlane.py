"""The hot path: a plain 2026-07-28 `tools/call` or `resources/read` over Streamable HTTP, served
without the SDK's server.

Most traffic through a gateway is tool calls (and reads), and in the stateless era each one
is a self-contained POST. For those the SDK's machinery (the session manager,
the modern transport with its per-request task group, the server runner, its
pydantic request context) costs more CPU than the bus hop itself. This ASGI
layer sits innermost, behind the guards and the authentication gate, and takes
a request only when it is the common case: one `tools/call` or `resources/read` whose
headers and envelope agree, with no progress token, no log level, no `requestState` and no
`Mcp-Param-*` headers, for a tool the caller may use without consent (a resource it may see). Anything
else, including every malformed request, goes on to the SDK unchanged, so its
answers (codes, HTTP statuses, messages) stay the SDK's.

What it does is what the SDK path does for such a request: the same envelope
validation (the SDK's own validator), the same SERVER span, the same forwarding
code (`FederatedServer.forward_call` / `forward_read`: audit, metrics, delivery), the same result
shaping (the SDK's result serializer, `resultType`, the `serverInfo` stamp), a
JSON answer, or an SSE stream with keepalive pings once a call runs past the
SDK's deferral window, and closing the connection cancels the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from functools import partial
from typing import Any

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from fedmcp.edge.auth import SCOPE_KEY
from fedmcp.edge.guard import MESSAGE_KEY
from fedmcp.edge.server import (
    RESERVED_META_PREFIX,
    FederatedServer,
    Front,
    finish_result,
    forward_params_of,
    strip_reserved,
)
from fedmcp.edge.upstream import RawResult
from fedmcp.shared import headers, telemetry
from fedmcp.shared.policy import Principal
from fedmcp.shared.routing import Route
from mcp.server.runner import modern_error_data
from mcp.shared._otel import extract_trace_context
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    decode_header_value,
    find_invalid_x_mcp_header,
    x_mcp_header_map,
)
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CORE_RESULT_TYPES,
    INTERNAL_ERROR,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
)
from mcp_types import methods as sdk_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CALL, READ = "tools/call", "resources/read"
SIMPLE_PARAMS = {CALL: frozenset(("name", "arguments", "_meta")), READ: frozenset(("uri", "_meta"))}
"""The methods the lane serves, with the params a plain request of each has."""
RAW_FROM = 1 << 20
"""Bytes of a read's response above which it is passed on as the server sent it (with the members
fedmcp adds), written out of the bus message itself: a large blob is never decoded or copied whole."""
PIECE = 1 << 20
"""Largest piece of a raw result handed to the HTTP transport at once."""
PING_INTERVAL = 15.0
"""Seconds of a silent call before the answer commits to SSE and pings (the SDK's deferral window)."""
WATCH_AFTER = 0.5
"""Seconds a call runs before it gets a watcher for the client going away (and for the pings): longer
than a call takes on a loaded edge (tens of ms), so that the common call never needs one; a call
whose client left sooner runs on for at most this long."""
SESSION_HEADER = b"mcp-session-id"
ROUTING_HEADERS = frozenset(
    h.lower().encode() for h in (MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER, MCP_NAME_HEADER)
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
log = structlog.get_logger("fedmcp.edge.fastlane")
_encoder = msgspec.json.Encoder()
Buffer = bytes | memoryview
_tracer = trace.get_tracer("mcp-python-sdk")  # the SDK's own SERVER span, as the slow path makes it


class _Plan(msgspec.Struct):
    method: str
    request_id: str | int
    version: str
    name: str
    """The tool's name, or the resource's URI."""
    arguments_given: bool
    meta: dict[str, Any]
    params: dict[str, Any]


def accepts(value: str) -> bool:
    """JSON and SSE both acceptable, as the SDK's SSE-mode endpoint requires (wildcards: SDK path)."""
    types = [part.split(";")[0].strip().lower() for part in value.split(",")]
    return "application/json" in types and "text/event-stream" in types


class Watchers:
    """The task group in which the lanes (this one, session_lane.py) watch their long calls: for the
    client going away, and to ping the stream (entered for the app's lifespan)."""

    def __init__(self) -> None:
        self.group: TaskGroup | None = None

    def after(self, delay: float, watch: Callable[[], Awaitable[None]]) -> AbstractContextManager[None]:
        """`watch()` runs in the group if the block still runs after `delay` seconds, and is cancelled
        when the block ends: a quicker call costs a loop timer, not a task (outside `running()`, nothing
        watches)."""
        return _NOBODY if self.group is None else _Watch(self.group, delay, watch)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            self.group = group
            try:
                yield
            finally:
                self.group = None
                group.cancel_scope.cancel()


_NOBODY = nullcontext()


class _Watch:
    """A block watched by `Watchers.after` (a class, not a generator: every call enters one)."""

    __slots__ = ("delay", "group", "scope", "timer", "watch")

    def __init__(self, group: TaskGroup, delay: float, watch: Callable[[], Awaitable[None]]) -> None:
        self.group = group
        self.delay = delay
        self.watch = watch
        self.timer: asyncio.TimerHandle | None = None
        self.scope: anyio.CancelScope | None = None

    def __enter__(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self.timer = None
        self.scope = anyio.CancelScope()
        self.group.start_soon(_within, self.scope, self.watch)

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.scope is not None:  # (a cancel costs a repr of the task: only when there is a watcher)
            self.scope.cancel()


async def _within(scope: anyio.CancelScope, watch: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await watch()


class LaneRules:
    """What the lanes (this one, session_lane.py) decide as the SDK's path would: which calls policy lets
    through without a word, and how a result is shaped on the wire."""

    def __init__(self, federated: FederatedServer) -> None:
        self.federated = federated
        self._server_info: dict[str, Any] | None = None
        self._mirroring: tuple[object, dict[str, bool]] = (None, {})
        """The routing table it was worked out for, and per tool name whether its inputSchema mirrors
        arguments into Mcp-Param-* headers (worked out again for each new table)."""

    def admit(self, method: str, name: str, scope: Scope, *, mirrored: bool) -> tuple[Principal, Route] | None:
        """Who calls which tool (`name`) or reads which resource (URI), when policy lets them without a
        word: refusals (with their audit events), consent and header checks are the SDK path's.
        `mirrored`: the call has arguments a tool may mirror into `Mcp-Param-*` headers (2026-07-28)."""
        federated = self.federated
        found = scope.get(SCOPE_KEY)
        principal = found if isinstance(found, Principal) else federated.local_principal
        table = federated.view.table
        route = table.tool_route(name) if method == CALL else table.route_uri(name)
        if route is None:
            return None
        governance = federated.governance
        entry = table.servers.get(route.server)
        if entry is None or entry.settings.affinity == "session":
            return None
        if method == READ:
            return (principal, route) if governance.visible(principal, "resource", route) else None
        policy = governance.current
        if (
            not governance.visible(principal, "tool", route)
            or (policy is not None and policy.missing_scopes(principal, "tool", route.server, route.name))
            or governance.needs_consent(principal, route, federated.tool_hints(name))
            or (mirrored and self._mirrors_headers(name))
        ):
            return None
        return principal, route

    def _mirrors_headers(self, name: str) -> bool:
        """Whether the tool declares arguments mirrored into headers (then the SDK checks them)."""
        table = self.federated.view.table
        if self._mirroring[0] is not table:
            self._mirroring = (table, {})
        known = self._mirroring[1]
        if name not in known:
            schema = (table.tool_by_name.get(name) or {}).get("inputSchema")
            known[name] = isinstance(schema, dict) and (
                find_invalid_x_mcp_header(schema) is not None or bool(x_mcp_header_map(schema))
            )
        return known[name]

    def shape(self, version: str, method: str, result: Any) -> dict[str, Any]:
        """The result on the wire, as the SDK's runner shapes a handler's (`ServerRunner._serialize`),
        for either era (a handshake-era result is sieved whatever its `resultType`, and not stamped)."""
        dumped: dict[str, Any] = dict(result) if isinstance(result, dict) else {}
        hint = self.federated.server.cache_hints.get(method)
        if hint is not None and not sdk_methods.is_input_required(dumped):
            dumped = {"ttlMs": hint.ttl_ms, "cacheScope": hint.scope, **dumped}
        modern = version in MODERN_PROTOCOL_VERSIONS
        result_type = dumped.get("resultType")
        if not modern or not isinstance(result_type, str) or result_type in CORE_RESULT_TYPES:
            try:
                dumped = sdk_methods.serialize_server_result(method, version, dumped)
            except ValidationError:
                raise MCPError(code=INTERNAL_ERROR, message="Handler returned an invalid result") from None
        if not modern:
            return dumped
        if dumped.get("resultType") is None:
            dumped["resultType"] = "complete"
        dumped["_meta"] = self.stamped(dumped.get("_meta"))
        return dumped

    @staticmethod
    def decoded(version: str, result: Any) -> Any:
        """A result as the SDK's path has it: a raw one (a read's, upstream.RawResult) decoded, the
        backing server's envelope keys taken out."""
        if not isinstance(result, RawResult):
            return result
        return finish_result(version, {key: msgspec.json.decode(value) for key, value in result.fields.items()})

    def stamped(self, meta: Any) -> Any:
        """A result's `_meta` with this edge's `serverInfo` (a server-set one, or a non-object, is kept)."""
        if meta is None or (isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None):
            if self._server_info is None:
                # The SDK's property deep-copies on every access so callers may mutate it; the lane only
                # encodes what it stamps, so one copy serves every answer.
                self._server_info = self.federated.server.server_info_stamp
            return {**(meta or {}), SERVER_INFO_META_KEY: self._server_info}
        return meta


class FastLane:
    def __init__(
        self, app: ASGIApp, *, path: str, federated: FederatedServer, rules: LaneRules, watchers: Watchers
    ) -> None:
        self.app = app
        self.path = path
        self.federated = federated
        self.rules = rules
        self.watchers = watchers
        self._valid_envelopes: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = admitted = None
        if scope["type"] == "http" and scope["method"] == "POST":
            try:
                plan = self._plan(scope)
                admitted = (
                    self.rules.admit(plan.method, plan.name, scope, mirrored=plan.arguments_given)
                    if plan is not None
                    else None
                )
            except Exception:  # whatever puzzles the lane is the SDK path's to answer
                log.debug("fast lane passed on a request it could not read", exc_info=True)
                admitted = None
        if plan is None or admitted is None:
            await self.app(scope, receive, send)
            return
        await self._serve(plan, *admitted, scope, receive, send)

    # -- is this the common case? -------------------------------------------------------------
    def _plan(self, scope: Scope) -> _Plan | None:
        message = scope.get(MESSAGE_KEY)
        wanted = message.get("method") if isinstance(message, dict) else None
        if wanted not in SIMPLE_PARAMS or scope["path"] != self.path:
            return None
        assert isinstance(message, dict) and isinstance(wanted, str)
        version = content_type = accept = method = name_header = None
        seen: set[bytes] = set()
        for key, value in scope["headers"]:
            if key in ROUTING_HEADERS:
                if key in seen:
                    return None  # duplicated routing header: the SDK answers that
                seen.add(key)
            if key == b"mcp-protocol-version":
                version = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"mcp-method":
                method = value.decode("latin-1")
            elif key == b"mcp-name":
                name_header = value.decode("latin-1")
            elif key == SESSION_HEADER or key.startswith(b"mcp-param-"):
                return None
        if version not in MODERN_PROTOCOL_VERSIONS or method != wanted or accept is None or not accepts(accept):
            return None
        if content_type is None or not content_type.lower().startswith("application/json"):
            return None
        request_id = message.get("id")
        params = message.get("params")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool) or not isinstance(params, dict):
            return None
        if not SIMPLE_PARAMS[wanted].issuperset(params):
            return None
        name = params.get(NAME_BEARING_METHODS[wanted])
        meta = params.get("_meta")
        arguments = params.get("arguments")
        if not isinstance(name, str) or not isinstance(meta, dict) or not isinstance(arguments, dict | None):
            return None
        if meta.get(PROTOCOL_VERSION_META_KEY) != version or "progressToken" in meta or LOG_LEVEL_META_KEY in meta:
            return None
        if not isinstance(meta.get(CLIENT_CAPABILITIES_META_KEY), dict) or name_header is None:
            return None
        try:
            if decode_header_value(name_header) != name:
                return None
            self._validate(wanted, version, params, meta)
        except (ValidationError, ValueError, KeyError):
            return None
        return _Plan(wanted, request_id, version, name, arguments is not None, meta, params)

    def _validate(self, method: str, version: str, params: dict[str, Any], meta: dict[str, Any]) -> None:
        """The SDK's validation of the request's params (raises ValidationError), remembered per envelope:
        beside it a plain request has only a string name or URI, an arguments object and free-form
        `_meta` keys, which `_plan` checked, so one envelope that passed passes again."""
        envelope = _encoder.encode(
            [method, version, {k: v for k, v in meta.items() if k.startswith(RESERVED_META_PREFIX)}]
        )
        if envelope in self._valid_envelopes:
            return
        sdk_methods.validate_client_request(method, version, params)
        if len(self._valid_envelopes) >= 1024:
            self._valid_envelopes.clear()
        self._valid_envelopes.add(envelope)

    # -- serving ------------------------------------------------------------------------------
    async def _serve(
        self, plan: _Plan, principal: Principal, route: Route, scope: Scope, receive: Receive, send: Send
    ) -> None:
        federated = self.federated
        front = Front(plan.version, principal, plan.meta[CLIENT_CAPABILITIES_META_KEY])
        forwarded = forward_params_of(plan.params)
        if plan.method == CALL:
            forwarded["name"] = route.name
        answer = _Answer(send)
        with _server_span(plan) as span:
            # Stays None when the client went away (then the call is cancelled).
            reply: tuple[int, list[Buffer]] | None = None
            # Past WATCH_AFTER a watcher cancels the call when the client goes away, and pings its stream.
            with (
                anyio.CancelScope() as call,
                self.watchers.after(WATCH_AFTER, partial(answer.keep_alive, receive, call)),
            ):
                try:
                    if plan.method == CALL:
                        result = await federated.forward_call(front, route, plan.name, forwarded)
                    else:
                        result = await federated.forward_read(front, route, forwarded)
                    body = self._finish(plan, result)
                except MCPError as exc:
                    code = str(exc.error.code)
                    span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                    span.set_status(StatusCode.ERROR, exc.error.message)
                    reply = answer.error(plan.request_id, exc)
                except Exception as exc:
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.record_exception(exc)
                    span.set_status(StatusCode.ERROR, str(exc))
                    reply = answer.error(plan.request_id, exc)
                else:
                    if isinstance(body, dict) and body.get("isError") is True:
                        span.set_attribute("error.type", "tool_error")
                        span.set_status(StatusCode.ERROR)
                    reply = answer.result(plan.request_id, body)
            if reply is not None:
                await answer.write(*reply)

    def _finish(self, plan: _Plan, result: Any) -> dict[str, Any] | list[Buffer]:
        """A forwarded call's result, or a read's: decoded and shaped as the SDK does, or for a large
        read the pieces of its raw JSON (`_raw_pieces`)."""
        if isinstance(result, RawResult) and result.size > RAW_FROM:
            return self._raw_pieces(plan.method, result.fields)
        return self.rules.shape(plan.version, plan.method, self.rules.decoded(plan.version, result))

    def _raw_pieces(self, method: str, fields: dict[str, msgspec.Raw]) -> list[Buffer]:
        """A large result as the server sent it, plus what the SDK path adds (cache hints, `resultType`,
        this edge's `serverInfo` instead of the server's own envelope keys): JSON in pieces, the
        members' values as views into the bus message."""
        meta_raw = fields.get("_meta")
        meta = self.rules.stamped(strip_reserved(msgspec.json.decode(meta_raw)) if meta_raw is not None else None)
        added: dict[str, Any] = {"resultType": "complete"}  # the lane serves 2026-07-28 clients only
        hint = self.federated.server.cache_hints.get(method)
        if hint is not None:
            added |= {"ttlMs": hint.ttl_ms, "cacheScope": hint.scope}
        pieces: list[Buffer] = []
        for key, value in added.items():
            if key not in fields:
                pieces += [_encoder.encode(key) + b":" + _encoder.encode(value), b","]
        for key, raw in fields.items():
            if key != "_meta":
                pieces += [_encoder.encode(key) + b":", memoryview(raw), b","]
        pieces += [b'"_meta":' + _encoder.encode(meta)]
        return [b"{", *pieces, b"}"]


def _server_span(plan: _Plan) -> AbstractContextManager[Span]:
    """The SDK's SERVER span, its parent taken from the envelope's trace context; when nothing records
    spans, only that context is made current (so it still travels on to the backing server)."""
    if not telemetry.recording():
        return trace_parent(plan.meta)
    attributes: dict[str, Any] = {
        "mcp.method.name": plan.method,
        "mcp.protocol.version": plan.version,
        "jsonrpc.request.id": str(plan.request_id),
        "network.transport": "tcp",
    }
    if plan.method == CALL:
        attributes |= {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": plan.name}
    return _tracer.start_as_current_span(
        f"{CALL} {plan.name}" if plan.method == CALL else READ,
        kind=SpanKind.SERVER,
        attributes=attributes,
        context=extract_trace_context(plan.meta),
        record_exception=False,
        set_status_on_exception=False,
    )


def trace_parent(meta: dict[str, Any] | None) -> AbstractContextManager[Span]:
    """The client's trace context from `_meta` made current for a block, so that it travels on to the
    backing server when this edge records no spans of its own (the block gets no span)."""
    if not meta or headers.TRACEPARENT not in meta:
        return telemetry.NO_SPAN
    parent = extract_trace_context(meta)
    return telemetry.NO_SPAN if parent is None else telemetry.Attached(parent)


class _Answer:
    """One response: JSON when the call ends within the deferral window, else SSE with pings."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.streaming = False

    async def keep_alive(self, receive: Receive, call: anyio.CancelScope) -> None:
        """Watch for the client going away (which cancels the call) and ping a long call's stream."""
        wait = PING_INTERVAL - WATCH_AFTER
        while True:
            message: Message | None = None
            with anyio.move_on_after(wait):
                message = await receive()
            if message is None:
                if not self.streaming:
                    self.streaming = True
                    await self.send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                await self.send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                wait = PING_INTERVAL
            elif message["type"] == "http.disconnect":
                call.cancel()
                return

    @staticmethod
    def result(request_id: str | int, result: dict[str, Any] | list[Buffer]) -> tuple[int, list[Buffer]]:
        if isinstance(result, dict):
            return 200, [_encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})]
        return 200, [b'{"jsonrpc":"2.0","id":' + _encoder.encode(request_id) + b',"result":', *result, b"}"]

    @staticmethod
    def error(request_id: str | int, exc: Exception) -> tuple[int, list[Buffer]]:
        error = modern_error_data(exc)
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.data is not None:
            body["data"] = error.data
        status = ERROR_CODE_HTTP_STATUS.get(error.code, 200)
        return status, [_encoder.encode({"jsonrpc": "2.0", "id": request_id, "error": body})]

    async def write(self, status: int, pieces: list[Buffer]) -> None:
        """The answer, once the pings have stopped: one body, or (a large read) the pieces handed to
        the transport a PIECE at a time, so that it never holds another copy of the whole."""
        if self.streaming:
            pieces = [b"event: message\r\ndata: ", *pieces, b"\r\n\r\n"]
        else:
            size = sum(memoryview(p).nbytes for p in pieces)
            response_headers = [*_JSON_HEADERS, (b"content-length", str(size).encode())]
            await self.send({"type": "http.response.start", "status": status, "headers": response_headers})
        if len(pieces) == 1:
            await self.send({"type": "http.response.body", "body": bytes(pieces[0]), "more_body": False})
            return
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, view.nbytes, PIECE):
                await self.send(
                    {"type": "http.response.body", "body": bytes(view[start : start + PIECE]), "more_body": True}
                )
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
