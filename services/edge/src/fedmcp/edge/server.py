"""The federation as one MCP server: the SDK's low-level `Server` with handlers that route over the bus.

The SDK owns the wire (both eras, handshake, envelope checks, version
negotiation, per-era result shaping); these handlers own routing. Lists are
served from the edge's in-memory catalog; calls, reads and prompt gets cross
the bus to the owning server's adapters.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import mcp_types as types
import structlog
from fedmcp.edge.catalog import CatalogView
from fedmcp.edge.pagination import page
from fedmcp.edge.upstream import Upstream
from fedmcp.shared import jsonrpc
from mcp.server import Server, ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

log = structlog.get_logger("fedmcp.edge")

RESERVED_META_PREFIX = "io.modelcontextprotocol/"
LOG_LEVEL_META_KEY = "io.modelcontextprotocol/logLevel"
"""Envelope keys are minted per hop: the adapter's SDK client writes its own."""

Params = dict[str, Any]

NO_CACHE = CacheHint(ttl_ms=0, scope="private")


def _version() -> str:
    try:
        return importlib.metadata.version("fedmcp-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def forward_params(ctx: ServerRequestContext[Any, Any]) -> Params:
    params: Params = dict(ctx.params or {})
    meta = params.get("_meta")
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if not k.startswith(RESERVED_META_PREFIX)}
        if kept:
            params["_meta"] = kept
        else:
            del params["_meta"]
    return params


def _strip_reserved_meta(result: Any) -> Any:
    """The backing server's envelope (serverInfo, ...) must not pose as the edge's."""
    if isinstance(result, dict):
        meta = result.get("_meta")
        if isinstance(meta, dict):
            kept = {k: v for k, v in meta.items() if not k.startswith(RESERVED_META_PREFIX)}
            if kept:
                result["_meta"] = kept
            else:
                del result["_meta"]
    return result


def _complete(ctx: ServerRequestContext[Any, Any], result: Params) -> Params:
    """2026-07-28 results must say their `resultType`; the SDK fills it only for typed results."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        result.setdefault("resultType", "complete")
    return result


def resource_not_found(ctx: ServerRequestContext[Any, Any], uri: str) -> MCPError:
    modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
    code = jsonrpc.INVALID_PARAMS if modern else jsonrpc.RESOURCE_NOT_FOUND_LEGACY
    return MCPError(code=code, message=f"Resource not found: {uri}", data={"uri": uri})


class FederatedServer:
    def __init__(self, view: CatalogView, upstream: Upstream, *, name: str = "fedmcp") -> None:
        self.view = view
        self.upstream = upstream
        self.events = InMemorySubscriptionBus()
        self._legacy_sessions: dict[int, ServerSession] = {}
        self._log_levels: dict[int, str] = {}
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
            on_subscriptions_listen=ListenHandler(self.events),
            # Results without hints get the safe defaults: never cached, never shared.
            cache_hints={
                "tools/list": NO_CACHE,
                "prompts/list": NO_CACHE,
                "resources/list": NO_CACHE,
                "resources/templates/list": NO_CACHE,
                "resources/read": NO_CACHE,
            },
        )
        view.on_change(self.notify_changed)

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        """Lets the SDK check `Mcp-Param-*` headers without running tools/list per request."""
        tool = self.view.table.tool_by_name.get(name)
        schema = tool.get("inputSchema") if tool else None
        return schema if isinstance(schema, dict) else None

    def initialization_options(self) -> InitializationOptions:
        return self.server.create_initialization_options(NotificationOptions(True, True, True))

    # -- list_changed fan-out -------------------------------------------------
    def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Keep a handle on handshake-era connections so list changes can reach them."""
        session = ctx.session
        if session.protocol_version not in MODERN_PROTOCOL_VERSIONS and session.client_params is not None:
            self._legacy_sessions.setdefault(id(session.client_params), session)

    async def notify_changed(self, kinds: frozenset[str]) -> None:
        events: dict[str, ServerEvent] = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        for kind in sorted(kinds):
            await self.events.publish(events[kind])
        for key, session in list(self._legacy_sessions.items()):
            try:
                if "tools" in kinds:
                    await session.send_tool_list_changed()
                if "prompts" in kinds:
                    await session.send_prompt_list_changed()
                if "resources" in kinds:
                    await session.send_resource_list_changed()
            except Exception:  # the connection is gone; forget it
                self._legacy_sessions.pop(key, None)

    # -- lists: from memory -------------------------------------------------
    def _cursor(self, params: types.PaginatedRequestParams | None) -> str | None:
        return params.cursor if params is not None else None

    async def list_tools(self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None) -> Any:
        self._remember(ctx)
        items, nxt = page(self.view.table.tool_list, self._cursor(params), "tools")
        return _complete(ctx, {"tools": items, "nextCursor": nxt} if nxt else {"tools": items})

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        self._remember(ctx)
        items, nxt = page(self.view.table.prompt_list, self._cursor(params), "prompts")
        return _complete(ctx, {"prompts": items, "nextCursor": nxt} if nxt else {"prompts": items})

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        self._remember(ctx)
        items, nxt = page(self.view.table.resource_list, self._cursor(params), "resources")
        return _complete(ctx, {"resources": items, "nextCursor": nxt} if nxt else {"resources": items})

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        self._remember(ctx)
        items, nxt = page(self.view.table.template_list, self._cursor(params), "templates")
        return _complete(ctx, {"resourceTemplates": items, "nextCursor": nxt} if nxt else {"resourceTemplates": items})

    # -- routed requests: over the bus ----------------------------------------
    def _log_level(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """2026-07-28: the request's own opt-in. Handshake era: the session's `logging/setLevel`."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            meta = (ctx.params or {}).get("_meta")
            level = meta.get(LOG_LEVEL_META_KEY) if isinstance(meta, dict) else None
            return level if isinstance(level, str) else None
        params = ctx.session.client_params
        return self._log_levels.get(id(params), "debug") if params is not None else "debug"

    async def set_logging_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> Any:
        self._remember(ctx)
        if ctx.session.client_params is not None:
            self._log_levels[id(ctx.session.client_params)] = params.level
        return {}

    async def _forward(self, ctx: ServerRequestContext[Any, Any], server: str, method: str, params: Params) -> Any:
        session = ctx.session

        async def on_notify(note_method: str, note: dict[str, Any]) -> None:
            # Request-scoped: only ever to the client whose request produced it.
            if note_method == "notifications/progress":
                await session.report_progress(note.get("progress", 0), note.get("total"), note.get("message"))
            elif note_method == "notifications/message":
                await session.send_log_message(
                    note.get("level", "info"), note.get("data"), note.get("logger"), related_request_id=ctx.request_id
                )

        result = await self.upstream.request(
            server,
            method,
            params,
            front_version=ctx.protocol_version,
            log_level=self._log_level(ctx),
            on_notify=on_notify,
        )
        return _complete(ctx, _strip_reserved_meta(result))

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        self._remember(ctx)
        route = self.view.table.tools.get(params.name)
        if route is None:
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        forwarded = forward_params(ctx)
        forwarded["name"] = route.name
        return await self._forward(ctx, route.server, "tools/call", forwarded)

    async def get_prompt(self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        self._remember(ctx)
        route = self.view.table.prompts.get(params.name)
        if route is None:
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        forwarded = forward_params(ctx)
        forwarded["name"] = route.name
        return await self._forward(ctx, route.server, "prompts/get", forwarded)

    async def read_resource(self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        self._remember(ctx)
        uri = str(params.uri)
        route = self.view.table.route_uri(uri)
        if route is None:
            raise resource_not_found(ctx, uri)
        return await self._forward(ctx, route.server, "resources/read", forward_params(ctx))

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> Any:
        self._remember(ctx)
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
        return await self._forward(ctx, route.server, "completion/complete", forwarded)
