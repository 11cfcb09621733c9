"""The federation as one MCP server: the SDK's low-level `Server` with handlers that route over the bus.

The SDK owns the wire (both eras, handshake, envelope checks, version
negotiation, per-era result shaping); these handlers own routing. Lists are
served from the edge's in-memory catalog; calls, reads and prompt gets cross
the bus to the owning server's adapters.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio
import mcp_types as types
import msgspec
import structlog
from fedmcp.edge.auth import ANONYMOUS, principal_of
from fedmcp.edge.catalog import CatalogView
from fedmcp.edge.clients import DEFAULT_LEVEL, LegacyClients, connection_of
from fedmcp.edge.governance import Governance, approved, consent_form
from fedmcp.edge.pagination import page
from fedmcp.edge.pins import Pins
from fedmcp.edge.request_state import SEALED_PREFIX, InvalidState, Sealer
from fedmcp.edge.session_directory import SessionDirectory
from fedmcp.edge.sessions import SessionRecorder
from fedmcp.edge.spans import SessionAttributes
from fedmcp.edge.subscriptions import EdgeSubscriptions, ListenWithResources
from fedmcp.edge.upstream import RawResult, Upstream
from fedmcp.shared import jsonrpc, metrics
from fedmcp.shared.envelopes import Freshness
from fedmcp.shared.frontsession import SessionRecord
from fedmcp.shared.policy import Kind, Principal
from fedmcp.shared.routing import Route
from mcp.server import Server, ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import CLIENT_CAPABILITIES_META_KEY, LOG_LEVEL_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

log = structlog.get_logger("fedmcp.edge")

RESERVED_META_PREFIX = "io.modelcontextprotocol/"
INPUT_REQUIRED = "input_required"
INPUT_KEY = "fedmcp"
MAX_INPUT_ROUNDS = 10
MISSING_CAPABILITY = -32021
CONSENT_KEY = "fedmcp.consent"
"""Envelope keys are minted per hop: the adapter's SDK client writes its own."""

Params = dict[str, Any]

NO_CACHE = CacheHint(ttl_ms=0, scope="private")


async def _nothing(session_id: str) -> None:
    return None


@asynccontextmanager
async def _no_hold(session_id: str) -> AsyncIterator[None]:
    yield


def _with_subscription(uri: str, subscribed: bool, record: SessionRecord) -> SessionRecord:
    others = [u for u in record.subscriptions if u != uri]
    return msgspec.structs.replace(record, subscriptions=[*others, uri] if subscribed else others)


def _version() -> str:
    try:
        return importlib.metadata.version("fedmcp-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def forward_params(ctx: ServerRequestContext[Any, Any]) -> Params:
    """The client's params for the next hop, without this hop's envelope."""
    return forward_params_of(ctx.params)


def forward_params_of(params: Any) -> Params:
    forwarded: Params = _strip_reserved_meta(dict(params or {}))
    return forwarded


def strip_reserved(meta: Any) -> Any:
    """A `_meta` object without its `io.modelcontextprotocol/*` keys."""
    if not isinstance(meta, dict):
        return meta
    return {k: v for k, v in meta.items() if not k.startswith(RESERVED_META_PREFIX)}


def finish_result(version: str, result: Params) -> Params:
    """A backing server's result for the front: its envelope keys dropped, `resultType` said."""
    return _complete(version, _strip_reserved_meta(result))


def _strip_reserved_meta(result: Any) -> Any:
    """Drop `io.modelcontextprotocol/*` `_meta` keys: each hop mints its own envelope, and the
    backing server's (serverInfo, ...) must not pose as the edge's."""
    if isinstance(result, dict) and isinstance(result.get("_meta"), dict):
        kept = strip_reserved(result["_meta"])
        if kept:
            result["_meta"] = kept
        else:
            del result["_meta"]
    return result


def _complete(version: str, result: Params) -> Params:
    """2026-07-28 results must say their `resultType`; the SDK fills it only for typed results."""
    if version in MODERN_PROTOCOL_VERSIONS:
        result.setdefault("resultType", "complete")
    return result


def is_input_required(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == INPUT_REQUIRED


def client_can(caps: dict[str, Any], method: str) -> bool:
    """Whether a client declared (in `client_capabilities` form) what `method`, a server-to-client
    request, needs."""
    needs = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}.get(
        method
    )
    return needs is not None and caps.get(needs) is not None


def client_capabilities(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """What the client declared, for the backing hop: 2026-07-28 clients say it in each request's
    envelope (taken as sent, no model round trip); earlier ones once per session."""
    meta = (ctx.params or {}).get("_meta")
    declared = meta.get(CLIENT_CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    if isinstance(declared, dict):
        return declared
    caps = ctx.session.client_capabilities
    return caps.model_dump(mode="json", by_alias=True, exclude_none=True) if caps is not None else {}


def resource_not_found(ctx: ServerRequestContext[Any, Any], uri: str) -> MCPError:
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    code = jsonrpc.INVALID_PARAMS if modern else jsonrpc.RESOURCE_NOT_FOUND_LEGACY
    return MCPError(code=code, message=f"Resource not found: {uri}", data={"uri": uri})


class BackChannel(Protocol):
    """How a call reaches its handshake-era client while it runs: request-scoped notifications
    (progress, log messages) and server-to-client requests, on the call's own stream."""

    async def notify(self, method: str, params: dict[str, Any]) -> None: ...

    async def ask(self, method: str, params: dict[str, Any]) -> Any:
        """The client's result; MCPError for its error."""
        ...


class SdkChannel:
    """The back channel of a request served by the SDK: its session, its POST stream."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self.ctx = ctx

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        session = self.ctx.session
        if method == "notifications/progress":
            await session.report_progress(params.get("progress", 0), params.get("total"), params.get("message"))
        elif method == "notifications/message":
            await session.send_log_message(
                params.get("level", "info"),
                params.get("data"),
                params.get("logger"),
                related_request_id=self.ctx.request_id,
            )

    async def ask(self, method: str, params: dict[str, Any]) -> Any:
        request = server_request(method, params)
        result = await self.ctx.session.send_request(
            request, jsonrpc.RawResult, metadata=ServerMessageMetadata(related_request_id=self.ctx.request_id)
        )
        return result.root


def server_request(method: str, params: dict[str, Any]) -> Any:
    """A server-to-client request as the SDK's model (INVALID_PARAMS when it is not one)."""
    try:
        return types.server_request_adapter.validate_python({"method": method, "params": params})
    except ValidationError:
        raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"malformed {method} request") from None


@dataclass
class Front:
    """One front request as forwarding needs it: built from the SDK's request context (`ctx`), or
    by a lane (fastlane.py, session_lane.py) straight from the HTTP request."""

    version: str
    principal: Principal
    capabilities: dict[str, Any]
    """What the client declared, for the backing hop (`client_capabilities`)."""
    log_level: str | None = None
    ctx: ServerRequestContext[Any, Any] | None = None
    """The SDK's context (SEP-1699 polling, pinned sessions), when the SDK serves the request."""
    channel: BackChannel | None = None
    """The handshake-era client's back channel; None for 2026-07-28 clients, which have none."""

    @property
    def modern(self) -> bool:
        return self.version in MODERN_PROTOCOL_VERSIONS


class FederatedServer:
    def __init__(
        self,
        view: CatalogView,
        upstream: Upstream,
        *,
        name: str = "fedmcp",
        sealer: Sealer | None = None,
        sse_poll_after: float | None = None,
        governance: Governance | None = None,
        local_principal: Principal = ANONYMOUS,
        directory: SessionDirectory | None = None,
    ) -> None:
        self.view = view
        self.directory = directory
        """The region's handshake-era HTTP sessions (None: sessions live only in this edge's memory)."""
        self.expire_session: Callable[[str], Awaitable[None]] = _nothing
        """Ends a front session on every edge (its id then answers 404); set by the HTTP face."""
        self.hold_session: Callable[[str], AbstractAsyncContextManager[None]] = _no_hold
        """Keeps this edge's copy of a session while a call of it runs with its stream closed; set by the HTTP face."""
        self.governance = governance or Governance()
        self.local_principal = local_principal
        """Who a stdio client is (the HTTP gate puts the authenticated principal in each request)."""
        self.sse_poll_after = sse_poll_after
        """SEP-1699 polling: seconds after which a handshake-era call's POST stream is closed
        (with a retry hint) while the call goes on; None never closes it."""
        self.sealer = sealer or Sealer()
        self.upstream = upstream
        self._forwarding = 0
        metrics.count_from(metrics.EDGE_INFLIGHT, self._forwarding_now)
        self.pins = Pins(upstream)
        """Front sessions pinned to the instance holding their own backing session (affinity = "session");
        the runtime binds it to the region's pins bucket."""
        self.events = InMemorySubscriptionBus()
        self.subscriptions = EdgeSubscriptions(view, upstream, self.events)
        self.legacy_clients = LegacyClients()
        self.server: Server[Any] = Server(
            name,
            version=_version(),
            instructions="fedmcp: many MCP servers behind one endpoint. Tool and prompt names carry their server's prefix.",
            get_tool_input_schema=self._tool_input_schema,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
            on_subscriptions_listen=ListenWithResources(ListenHandler(self.events), self.subscriptions),
            on_subscribe_resource=self.subscribe_resource,
            on_unsubscribe_resource=self.unsubscribe_resource,
            # Results without hints get the safe defaults: never cached, never shared.
            cache_hints={
                "tools/list": NO_CACHE,
                "prompts/list": NO_CACHE,
                "resources/list": NO_CACHE,
                "resources/templates/list": NO_CACHE,
                "resources/read": NO_CACHE,
            },
        )
        self.server.middleware.append(SessionAttributes())  # inside the SDK's tracing middleware
        if directory is not None:
            self.server.middleware.append(SessionRecorder(directory, lambda r: principal_of(r, local_principal).id))
        view.on_change(self.notify_changed)

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        """Lets the SDK check `Mcp-Param-*` headers without running tools/list per request."""
        tool = self.view.table.tool_by_name.get(name)
        schema = tool.get("inputSchema") if tool else None
        return schema if isinstance(schema, dict) else None

    def initialization_options(self) -> InitializationOptions:
        return self.server.create_initialization_options(NotificationOptions(True, True, True))

    def principal(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        return principal_of(ctx.request, self.local_principal)

    # -- list_changed fan-out -------------------------------------------------
    def shared_session(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """The id of the request's session when every edge shares it (a handshake-era HTTP session with
        a record in the sessions bucket): its GET stream is fed from the bus, its state from the record."""
        if self.directory is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        session_id = connection_of(ctx.session).session_id
        return session_id if session_id is not None and session_id in self.directory.records else None

    async def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Keep a handle on handshake-era connections so list changes can reach them (shared sessions
        get theirs from the feed, and their record is kept alive)."""
        session_id = self.shared_session(ctx)
        if session_id is not None and self.directory is not None:
            await self.directory.touch(session_id)
        else:
            self.legacy_clients.remember(ctx.session)

    async def session_closed(self, session_id: str) -> None:
        """A front session ended for good (the client's DELETE, or expiry on some edge)."""
        if self.directory is not None:
            self.subscriptions.drop_feed_session(session_id)
        await self.pins.release(session_id, self._affinity_servers())

    def _affinity_servers(self) -> set[str]:
        return {name for name, entry in self.view.table.servers.items() if entry.settings.affinity == "session"}

    async def release_local_sessions(self) -> None:
        """This edge stops: its connection-scoped front sessions (stdio, HTTP+SSE) end with it."""
        for session_id in self.pins.local_sessions:
            await self.pins.release(session_id, self._affinity_servers())

    async def notify_changed(self, kinds: frozenset[str]) -> None:
        events: dict[str, ServerEvent] = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        for kind in sorted(kinds):
            await self.events.publish(events[kind])
        await self.legacy_clients.list_changed(kinds)

    # -- lists: from memory -------------------------------------------------
    async def _list(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.PaginatedRequestParams | None,
        key: str,
        full: list[Any],
    ) -> Params:
        """One page of a merged list, from memory, with the list's caching hints for 2026-07-28 clients;
        only what the caller's policy lets it see."""
        await self._remember(ctx)
        table = self.view.table
        kinds: dict[str, tuple[Kind, dict[str, Any], str]] = {
            "tools": ("tool", table.tools, "name"),
            "prompts": ("prompt", table.prompts, "name"),
            "resources": ("resource", table.resources, "uri"),
        }
        if key in kinds:
            kind, routes, field = kinds[key]
            full = self.governance.filter(self.principal(ctx), kind, full, routes, field)
        items, nxt = page(full, params.cursor if params is not None else None, key)
        result: Params = {key: items}
        if nxt:
            result["nextCursor"] = nxt
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result.update(self.view.table.cache.get(key, Freshness()).wire())
        return _complete(ctx.protocol_version, result)

    async def list_tools(self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
        return await self._list(ctx, params, "tools", self.view.table.tool_list)

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        return await self._list(ctx, params, "prompts", self.view.table.prompt_list)

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        return await self._list(ctx, params, "resources", self.view.table.resource_list)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        return await self._list(ctx, params, "resourceTemplates", self.view.table.template_list)

    # -- routed requests: over the bus ----------------------------------------
    def _log_level(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """2026-07-28: the request's own opt-in. Handshake era: the session's `logging/setLevel`."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            meta = (ctx.params or {}).get("_meta")
            level = meta.get(LOG_LEVEL_META_KEY) if isinstance(meta, dict) else None
            return level if isinstance(level, str) else None
        session_id = self.shared_session(ctx)
        if session_id is not None and self.directory is not None:
            return self.directory.records[session_id].log_level or DEFAULT_LEVEL
        return self.legacy_clients.level(ctx.session)

    async def set_logging_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> Any:
        await self._remember(ctx)
        session_id = self.shared_session(ctx)
        if session_id is not None and self.directory is not None:
            level = str(params.level)
            await self.directory.change(session_id, lambda r: msgspec.structs.replace(r, log_level=level))
        self.legacy_clients.set_level(ctx.session, params.level)
        return {}

    def _front(self, ctx: ServerRequestContext[Any, Any]) -> Front:
        return Front(
            ctx.protocol_version,
            self.principal(ctx),
            client_capabilities(ctx),
            self._log_level(ctx),
            ctx,
            SdkChannel(ctx),
        )

    async def _forward(
        self,
        front: Front,
        server: str,
        method: str,
        params: Params,
        *,
        idempotent: bool = False,
        raw: bool = False,
    ) -> Any:
        """Route one request to `server`. `idempotent`: safe to run again if an instance dies mid-call;
        `raw`: the result stays undecoded (an upstream.RawResult), for the fast lane to pass on."""
        tool = str(params.get("name", "")) if method == "tools/call" else ""
        started = time.perf_counter()
        code: int | None = None
        self._forwarding += 1
        try:
            # Only handshake-era requests through the SDK can poll (the fast lane's never do).
            polling = self._polling(front.ctx) if front.ctx is not None and not front.modern else nullcontext()
            async with polling:
                return await self._forward_measured(front, server, method, params, idempotent, raw)
        except MCPError as exc:
            code = exc.error.code
            raise
        finally:
            self._forwarding -= 1
            metrics.labelled(metrics.SERVER_DURATION, server, method, tool, metrics.outcome(code)).observe(
                time.perf_counter() - started
            )

    def _forwarding_now(self) -> int:
        return self._forwarding

    @asynccontextmanager
    async def _polling(self, ctx: ServerRequestContext[Any, Any]) -> AsyncIterator[None]:
        """SEP-1699: a call still running after `sse_poll_after` seconds has its POST stream closed
        with a retry hint; the client comes back with `Last-Event-ID` and gets the rest from the
        event store. Frees connections on long calls (and through proxies that cut idle ones).
        The SDK offers the close only to resumable (2025-11-25) sessions; a 2026-07-28 stream
        close means cancel, so those never come here."""
        close = ctx.close_sse_stream
        if self.sse_poll_after is None or close is None:
            yield
            return
        after = self.sse_poll_after

        session_id = connection_of(ctx.session).session_id

        async def later() -> None:
            await anyio.sleep(after)
            await close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            try:
                if session_id is None:
                    yield
                else:
                    async with self.hold_session(session_id):
                        yield
            finally:
                tg.cancel_scope.cancel()

    async def _forward_measured(
        self, front: Front, server: str, method: str, params: Params, idempotent: bool, raw: bool = False
    ) -> Any:
        ctx = front.ctx
        channel = front.channel
        modern = front.modern
        caller = front.principal
        principal = caller.id

        async def on_request(
            req_method: str, req_params: dict[str, Any], answer_to: str, req_id: jsonrpc.RequestId | None
        ) -> Any:
            """A handshake-era backing server asks the client something mid-call."""
            if not modern:
                assert channel is not None
                try:
                    answer = await channel.ask(req_method, req_params)
                except MCPError as exc:
                    err = exc.error
                    self.upstream.answer(answer_to, jsonrpc.encode_error(req_id, err.code, err.message, err.data))
                else:
                    self.upstream.answer(answer_to, jsonrpc.encode_result(req_id, answer))
                return None
            if not client_can(front.capabilities, req_method):
                message = f"the client did not declare the capability for {req_method}"
                self.upstream.answer(answer_to, jsonrpc.encode_error(req_id, MISSING_CAPABILITY, message))
                return None
            # A 2026-07-28 client has no back channel: the question becomes an input_required
            # result, and the client's retry (on any edge) carries the answer back to this call.
            state = self.sealer.new(server=server, principal=principal, answer_to=answer_to, key=INPUT_KEY)
            return {
                "resultType": INPUT_REQUIRED,
                "inputRequests": {INPUT_KEY: {"method": req_method, "params": req_params}},
                "requestState": state,
            }

        call = partial(
            self.upstream.request,
            server,
            method,
            idempotent=idempotent,
            front_version=front.version,
            log_level=front.log_level,
            on_notify=channel.notify if channel is not None else None,
            on_request=on_request,
            capabilities=front.capabilities,
            identity=self.governance.assertion(caller, server),
            raw=raw,
        )
        front_session = self.pins.front_session(ctx, self.view.table.servers.get(server)) if ctx is not None else None
        if front_session is not None:
            # A stateful server: this front session's own backing session, on the instance holding it.
            call = partial(self.pins.request, front_session, server, principal, call, expire=self.expire_session)
        token = params.get("requestState")
        if modern and isinstance(token, str) and token.startswith(SEALED_PREFIX):
            try:
                state = self.sealer.open(token, principal=principal)
            except InvalidState as exc:
                raise MCPError(code=jsonrpc.INVALID_PARAMS, message=str(exc)) from None
            if state.server != server:
                raise MCPError(code=jsonrpc.INVALID_PARAMS, message="requestState belongs to another request")
            if state.answer_to is not None:
                answer = (params.get("inputResponses") or {}).get(state.key)
                if answer is None:
                    raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"inputResponses lacks {state.key!r}")
                result = await self.upstream.resume(
                    server,
                    state.answer_to,
                    jsonrpc.encode_result(None, answer),
                    on_notify=channel.notify if channel is not None else None,
                    on_request=on_request,
                )
            else:
                params = {k: v for k, v in params.items() if k != "requestState"}
                if state.backend_state is not None:
                    params["requestState"] = state.backend_state
                result = await call(params)
        else:
            result = await call(params)
        if isinstance(result, RawResult):
            return result  # the fast lane finishes it
        rounds = 0
        while not modern and is_input_required(result) and rounds < MAX_INPUT_ROUNDS:
            # A 2026-07-28 backing server asks through its result; a handshake-era client is
            # asked with real requests, and the backing call is retried with the answers.
            rounds += 1
            assert channel is not None
            responses = {
                key: await channel.ask(req.get("method", ""), req.get("params") or {})
                for key, req in (result.get("inputRequests") or {}).items()
            }
            params = {k: v for k, v in params.items() if k not in ("requestState", "inputResponses")}
            params["inputResponses"] = responses
            if result.get("requestState") is not None:
                params["requestState"] = result["requestState"]
            result = await call(params)
        if modern and is_input_required(result) and not str(result.get("requestState", "")).startswith(SEALED_PREFIX):
            result["requestState"] = self.sealer.new(
                server=server, principal=principal, backend_state=result.get("requestState")
            )
        return finish_result(front.version, result)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        await self._remember(ctx)
        front = self._front(ctx)
        route = self.view.table.tool_route(params.name)
        if route is None:
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        await self.governance.check_call(front.principal, route, params.name)
        forwarded = forward_params(ctx)
        forwarded["name"] = route.name
        if self.governance.needs_consent(front.principal, route, self.tool_hints(params.name)):
            asked = await self._consent(ctx, front.principal, route, forwarded)
            if asked is not None:
                return asked
            forwarded = {k: v for k, v in forwarded.items() if k not in ("requestState", "inputResponses")}
        return await self.forward_call(front, route, params.name, forwarded)

    def tool_hints(self, exposed: str) -> dict[str, Any]:
        """The annotations the catalog has for the tool named `exposed`."""
        return self.view.table.tool_by_name.get(exposed, {}).get("annotations") or {}

    async def forward_read(self, front: Front, route: Route, forwarded: Params) -> Any:
        """A resources/read for the fast lane: the result stays raw (upstream.RawResult)."""
        return await self._forward(front, route.server, "resources/read", forwarded, idempotent=True, raw=True)

    async def forward_call(self, front: Front, route: Route, exposed: str, forwarded: Params) -> Any:
        """A tools/call that policy and consent have let through: audited, then sent to its server."""
        await self.governance.record("allowed", front.principal, route)
        hints = self.tool_hints(exposed)
        idempotent = bool(hints.get("readOnlyHint") or hints.get("idempotentHint"))
        return await self._forward(front, route.server, "tools/call", forwarded, idempotent=idempotent)

    async def _consent(
        self, ctx: ServerRequestContext[Any, Any], principal: Principal, route: Route, params: Params
    ) -> Any:
        """Get the user's consent: handshake-era clients are asked on the spot; a 2026-07-28 client
        gets an input_required result, and its retry (on any edge) carries the answer. Returns the
        result to send instead of calling, or None when consent was given."""
        governance = self.governance
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            caps = client_capabilities(ctx)
            await governance.obtain_consent(principal, route, caps, SdkChannel(ctx).ask)
            return None
        token = params.get("requestState")
        if isinstance(token, str) and token.startswith(SEALED_PREFIX):
            try:
                state = self.sealer.open(token, principal=principal.id)
            except InvalidState as exc:
                raise MCPError(code=jsonrpc.INVALID_PARAMS, message=str(exc)) from None
            if state.key == CONSENT_KEY and state.server == route.server:
                answer = (params.get("inputResponses") or {}).get(CONSENT_KEY)
                await governance.settle(principal, route, approved(answer))
                return None
        caps = client_capabilities(ctx)
        if not isinstance(caps.get("elicitation"), dict):
            await governance.obtain_consent(principal, route, caps, self._no_back_channel)
        await governance.record("consent.asked", principal, route, outcome="input_required")
        return {
            "resultType": INPUT_REQUIRED,
            "inputRequests": {
                CONSENT_KEY: {"method": "elicitation/create", "params": consent_form(route.server, route.name)}
            },
            "requestState": self.sealer.new(server=route.server, principal=principal.id, key=CONSENT_KEY),
        }

    async def _no_back_channel(self, method: str, params: dict[str, Any]) -> Any:
        raise MCPError(code=MISSING_CAPABILITY, message=f"the client cannot take {method}")

    async def get_prompt(self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        await self._remember(ctx)
        route = self.view.table.prompt_route(params.name)
        if route is None or not self.governance.visible(self.principal(ctx), "prompt", route):
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        forwarded = forward_params(ctx)
        forwarded["name"] = route.name
        return await self._forward(self._front(ctx), route.server, "prompts/get", forwarded, idempotent=True)

    async def read_resource(self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        await self._remember(ctx)
        uri = str(params.uri)
        route = self.view.table.route_uri(uri)
        if route is None or not self.governance.visible(self.principal(ctx), "resource", route):
            raise resource_not_found(ctx, uri)
        return await self._forward(
            self._front(ctx), route.server, "resources/read", forward_params(ctx), idempotent=True
        )

    async def subscribe_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        await self._remember(ctx)
        uri = str(params.uri)
        key = self.subscriptions.key_for(uri)
        if key is None:
            raise resource_not_found(ctx, uri)
        session_id = self.shared_session(ctx)
        if session_id is not None and self.directory is not None:
            await self.directory.change(session_id, partial(_with_subscription, uri, True))
            await self.subscriptions.add_feed_session(key, session_id)
        else:
            await self.subscriptions.add_session(key, id(ctx.session.client_params), ctx.session)
        return types.EmptyResult()

    async def unsubscribe_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        key = self.subscriptions.key_for(uri)
        session_id = self.shared_session(ctx)
        if session_id is not None and self.directory is not None:
            await self.directory.change(session_id, partial(_with_subscription, uri, False))
            if key is not None:
                await self.subscriptions.remove_feed_session(key, session_id)
        elif key is not None:
            await self.subscriptions.remove_session(key, id(ctx.session.client_params))
        return types.EmptyResult()

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> Any:
        await self._remember(ctx)
        forwarded = forward_params(ctx)
        ref: Params = dict(forwarded.get("ref") or {})
        table = self.view.table
        if ref.get("type") == "ref/prompt":
            route = table.prompts.get(str(ref.get("name")))
            if route is None:
                raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown prompt: {ref.get('name')}")
            ref["name"] = route.name
        else:
            uri = str(ref.get("uri"))
            route = table.route_template(uri) or table.route_uri(uri)
            if route is None:
                raise resource_not_found(ctx, uri)
        forwarded["ref"] = ref
        return await self._forward(self._front(ctx), route.server, "completion/complete", forwarded, idempotent=True)
