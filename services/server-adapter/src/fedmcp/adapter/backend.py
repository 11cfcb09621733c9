"""The adapter's connection to its backing MCP server.

One `Client` per backing server, negotiated in whichever era the server
speaks (`server/discover` first, else `initialize`). A supervisor task keeps
it alive: when the server crashes it reconnects with exponential backoff,
and requests that arrive meanwhile wait a bounded time, then get a clear
JSON-RPC error instead of hanging.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp_types as types
import structlog
from fedmcp.shared import chunks, jsonrpc
from fedmcp.shared.config import BackingServer
from fedmcp.shared.envelopes import Catalog
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

log = structlog.get_logger("fedmcp.adapter.backend")


_MAX_PAGES = 1000

LIST_METHODS = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
    "prompts/list": "prompts",
}


Sink = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives a request-scoped notification (method, params) for the front client."""
Asker = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends a server-to-client request (method, params) to the front client; returns its result or raises MCPError."""
LOG_LEVEL_META_KEY = "io.modelcontextprotocol/logLevel"


class BackendUnavailable(Exception):
    """The backing server is not connected (starting, crashed, restarting)."""


class Backend:
    def __init__(
        self,
        name: str,
        config: BackingServer,
        on_catalog: Callable[[Catalog], Awaitable[None]],
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        probe_interval: float = 5.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.config = config
        self._on_catalog = on_catalog
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._probe_interval = probe_interval
        self._connect_timeout = connect_timeout
        self._client: Client | None = None
        self._ready = anyio.Event()
        self._lost = anyio.Event()
        self._relist = anyio.Event()
        self.restarts = 0
        self.state = "starting"
        self.catalog: Catalog | None = None
        self._log_sinks: dict[int, tuple[str, Sink]] = {}
        self._askers: dict[int, Asker] = {}
        self._in_flight = 0
        self._sink_ids = 0

    async def wait_ready(self) -> None:
        """Until the backing server is connected and its catalog read."""
        while self._client is None:
            await self._ready.wait()

    # -- connection ---------------------------------------------------------
    def _target(self, stack: AsyncExitStack) -> str | StdioServerParameters | Any:
        cfg = self.config
        if cfg.command is not None:
            env = dict(os.environ) if cfg.inherit_env else get_default_environment()
            env.update(cfg.env)
            return StdioServerParameters(command=cfg.command, args=cfg.args, env=env, cwd=cfg.cwd)
        assert cfg.url is not None
        http = httpx2.AsyncClient(headers=cfg.headers, timeout=httpx2.Timeout(30.0, read=300.0))
        stack.push_async_callback(http.aclose)
        # The SDK caps one SSE event at 1 MiB; fedmcp carries results up to its own limit.
        return streamable_http_client(cfg.url, http_client=http, max_sse_event_size=chunks.DEFAULT_LIMIT)

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(
            message,
            types.ToolListChangedNotification
            | types.PromptListChangedNotification
            | types.ResourceListChangedNotification,
        ):
            self._relist.set()

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Log messages carry no request id on the wire: deliver only when exactly one
        in-flight request asked for them, so no client ever sees another's logs."""
        if len(self._log_sinks) != 1:
            return
        ((wanted, sink),) = self._log_sinks.values()
        if jsonrpc.level_allows(wanted, params.level):
            await sink("notifications/message", params.model_dump(mode="json", by_alias=True, exclude_none=True))

    async def _ask_front(self, method: str, params: BaseModel) -> dict[str, Any] | types.ErrorData:
        """A handshake-era server asks its client something mid-call. The wire says nothing
        about which call it belongs to, so it goes to the one call in flight; with several
        in flight it is refused rather than risk asking the wrong user."""
        if len(self._askers) != 1:
            reason = "no call in flight" if not self._askers else "several calls in flight on one backing session"
            return types.ErrorData(code=jsonrpc.INTERNAL_ERROR, message=f"fedmcp cannot route {method}: {reason}")
        (ask,) = self._askers.values()
        try:
            return await ask(method, params.model_dump(mode="json", by_alias=True, exclude_none=True))
        except MCPError as exc:
            return exc.error
        except Exception as exc:  # the bus or the client failed to answer: the server gets an error, not a hang
            log.info("server-to-client request got no answer", server=self.name, method=method, error=repr(exc))
            return types.ErrorData(code=jsonrpc.INTERNAL_ERROR, message=f"the client did not answer {method}")

    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        answer = await self._ask_front("sampling/createMessage", params)
        if isinstance(answer, types.ErrorData):
            return answer
        if answer.get("content") is not None and isinstance(answer["content"], list):
            return types.CreateMessageResultWithTools.model_validate(answer)
        return types.CreateMessageResult.model_validate(answer)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        answer = await self._ask_front("elicitation/create", params)
        return answer if isinstance(answer, types.ErrorData) else types.ElicitResult.model_validate(answer)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        answer = await self._ask_front("roots/list", types.RequestParams())
        return answer if isinstance(answer, types.ErrorData) else types.ListRootsResult.model_validate(answer)

    async def run(self) -> None:
        """Supervise the connection until cancelled."""
        backoff = self._backoff_initial
        while True:
            started = anyio.current_time()
            try:
                await self._connected_session()
            except Exception as exc:  # any failure of the child or the link: restart it
                log.warning("backing server connection failed", server=self.name, error=repr(exc))
            self.state = "restarting"
            self._client = None
            self._ready = anyio.Event()
            self.restarts += 1
            if anyio.current_time() - started > 30:
                backoff = self._backoff_initial  # it ran fine for a while: start the backoff over
            log.info("restarting backing server", server=self.name, in_seconds=backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _connected_session(self) -> None:
        # The handshake gets a deadline; once connected the scope is relaxed.
        # (A timeout scope around only the client's __aenter__ would be exited
        # while the client's own task group is still open.)
        with anyio.CancelScope(deadline=anyio.current_time() + self._connect_timeout) as scope:
            async with AsyncExitStack() as stack:
                client = Client(
                    self._target(stack),
                    mode=self.config.era,
                    cache=None,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    sampling_callback=self._on_sampling,
                    elicitation_callback=self._on_elicitation,
                    list_roots_callback=self._on_list_roots,
                )
                await stack.enter_async_context(client)
                if self.config.era in MODERN_PROTOCOL_VERSIONS:
                    # A pinned version skips the probe; ask for the real capabilities anyway.
                    raw = await client.session.send_discover(self.config.era)
                    client.session.adopt(types.DiscoverResult.model_validate(raw))
                self._lost = anyio.Event()
                self._client = client
                await self._publish_catalog(client)
                await self._open_log_gate(client)
                scope.deadline = math.inf
                self.state = "ready"
                self._ready.set()
                log.info("backing server connected", server=self.name, protocol_version=client.protocol_version)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._probe, client)
                    tg.start_soon(self._watch_lists, client)
                    if client.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
                        tg.start_soon(self._listen_modern, client)
                    await self._lost.wait()
                    tg.cancel_scope.cancel()
        if scope.cancelled_caught:
            raise TimeoutError(f"no handshake with the backing server within {self._connect_timeout}s")

    async def _open_log_gate(self, client: Client) -> None:
        """Handshake-era servers log per session: take everything, filter per request here."""
        caps = client.server_capabilities
        if caps.logging is not None and client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            try:
                await self._raw(client, "logging/setLevel", {"level": "debug"}, timeout=10)
            except MCPError as exc:
                log.info("backing server refused logging/setLevel", server=self.name, error=exc.error.message)

    async def _probe(self, client: Client) -> None:
        """Notice a backing server that died while idle."""
        while True:
            await anyio.sleep(self._probe_interval)
            if self._in_flight:
                continue  # calls in flight notice a dead server themselves; a probe would queue behind them
            method = "ping" if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS else "server/discover"
            try:
                await self._raw(client, method, None, timeout=10)
            except MCPError as exc:
                if exc.error.code == jsonrpc.METHOD_NOT_FOUND:
                    continue
                self._lost.set()
                return

    async def _watch_lists(self, client: Client) -> None:
        while True:
            await self._relist.wait()
            self._relist = anyio.Event()
            await self._publish_catalog(client)

    async def _listen_modern(self, client: Client) -> None:
        caps = client.server_capabilities
        tools = bool(caps.tools and caps.tools.list_changed)
        prompts = bool(caps.prompts and caps.prompts.list_changed)
        resources = bool(caps.resources and caps.resources.list_changed)
        if not (tools or prompts or resources):
            return
        try:
            async with client.listen(
                tools_list_changed=tools, prompts_list_changed=prompts, resources_list_changed=resources
            ) as sub:
                async for _event in sub:
                    self._relist.set()
        except Exception as exc:  # the server may not serve listen after all; polling is not worth it
            log.info("backing server has no usable subscriptions/listen", server=self.name, error=repr(exc))

    async def _publish_catalog(self, client: Client) -> None:
        catalog = await read_catalog(self.name, client)
        self.catalog = catalog
        await self._on_catalog(catalog)

    # -- requests -------------------------------------------------------------
    @staticmethod
    async def _raw(
        client: Client,
        method: str,
        params: dict[str, Any] | None,
        timeout: float,
        progress: ProgressFnT | None = None,
    ) -> dict[str, Any]:
        request = types.Request[dict[str, Any] | None, str](method=method, params=params)
        result = await client.session.send_request(
            request, jsonrpc.RawResult, request_read_timeout_seconds=timeout, progress_callback=progress
        )
        return result.root

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        wait_ready: float,
        sink: Sink | None = None,
        log_level: str | None = None,
        ask: Asker | None = None,
    ) -> dict[str, Any]:
        """Send one request to the backing server and return its raw result.

        Raises MCPError for a JSON-RPC error from the server, BackendUnavailable
        when it is not connected within `wait_ready` seconds.
        """
        client = self._client
        if client is None:
            with anyio.move_on_after(max(0.0, wait_ready)):
                await self._ready.wait()
            client = self._client
            if client is None:
                raise BackendUnavailable(self.state)
        params, progress = self._take_progress(params, sink)
        sink_id = 0
        if sink is not None and log_level is not None:
            if client.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
                params = {**(params or {})}
                params["_meta"] = {**params.get("_meta", {}), LOG_LEVEL_META_KEY: log_level}
            self._sink_ids += 1
            sink_id = self._sink_ids
            self._log_sinks[sink_id] = (log_level, sink)
        self._sink_ids += 1
        ask_id = self._sink_ids
        if ask is not None:
            self._askers[ask_id] = ask
        self._in_flight += 1
        try:
            return await self._raw(client, method, params, timeout, progress)
        except MCPError as exc:
            if exc.error.code == jsonrpc.CONNECTION_CLOSED_SDK:
                self._lost.set()
                raise BackendUnavailable("crashed") from exc
            raise
        except ValidationError as exc:
            log.warning("backing server returned an invalid result", server=self.name, method=method)
            raise MCPError(
                code=jsonrpc.INTERNAL_ERROR, message=f"server {self.name!r} returned an invalid {method} result"
            ) from exc
        finally:
            self._in_flight -= 1
            self._log_sinks.pop(sink_id, None)
            self._askers.pop(ask_id, None)

    @staticmethod
    def _take_progress(
        params: dict[str, Any] | None, sink: Sink | None
    ) -> tuple[dict[str, Any] | None, ProgressFnT | None]:
        """Swap the front's progress token for one of this hop: the SDK mints its own
        token for the backing request, and its progress goes back up the reply stream."""
        meta = params.get("_meta") if params else None
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return params, None
        assert params is not None
        rest = {k: v for k, v in meta.items() if k != "progressToken"}
        params = {k: v for k, v in params.items() if k != "_meta"}
        if rest:
            params["_meta"] = rest
        if sink is None:
            return params, None

        async def forward_progress(progress: float, total: float | None, message: str | None) -> None:
            note: dict[str, Any] = {"progress": progress}
            if total is not None:
                note["total"] = total
            if message is not None:
                note["message"] = message
            await sink("notifications/progress", note)

        return params, forward_progress


async def read_catalog(name: str, client: Client) -> Catalog:
    """Read every page of every list the server offers."""
    caps = client.server_capabilities
    offered = {
        "tools/list": caps.tools is not None,
        "resources/list": caps.resources is not None,
        "resources/templates/list": caps.resources is not None,
        "prompts/list": caps.prompts is not None,
    }
    lists: dict[str, list[dict[str, Any]]] = {}
    for method, key in LIST_METHODS.items():
        items: list[dict[str, Any]] = []
        if offered[method]:
            cursor: str | None = None
            for _ in range(_MAX_PAGES):
                page = await Backend._raw(client, method, {"cursor": cursor} if cursor else None, timeout=30)
                items.extend(page.get(key) or [])
                cursor = page.get("nextCursor")
                if not cursor:
                    break
        lists[key] = items
    info = client.server_info
    return Catalog(
        server=name,
        protocol_version=client.protocol_version,
        server_info=info.model_dump(mode="json", by_alias=True, exclude_none=True) if info else {},
        capabilities=caps.model_dump(mode="json", by_alias=True, exclude_none=True),
        instructions=client.instructions,
        tools=lists["tools"],
        resources=lists["resources"],
        resource_templates=lists["resourceTemplates"],
        prompts=lists["prompts"],
    )
