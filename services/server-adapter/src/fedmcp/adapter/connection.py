"""One supervised SDK `Client` session to the backing server.

The session is negotiated in a given mode ("auto": `server/discover` first,
else `initialize`; "legacy"; or a pinned 2026-07-28+ version) and restarted
with exponential backoff when the server crashes. Requests that arrive while
it is down wait a bounded time, then get a clear error instead of hanging.

What the backing server sends outside a response (log messages and, for
handshake-era servers, sampling/elicitation/roots requests) carries no
request id on a stdio wire, so it is attributed to the one call in flight on
this session; with several in flight it is refused rather than risk sending
one user's question to another. A `dedicated` session (one front session's
own, affinity = "session") has only that front session's calls, so there it
goes to the latest call in flight.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
import msgspec
import structlog
from fedmcp.adapter import stdio_lines
from fedmcp.adapter.envelope import HeaderMaps, enveloped, hop_headers, send_modern
from fedmcp.adapter.http_lane import HttpLane, Redirected
from fedmcp.adapter.raw_lane import OPENED, Outcome, Pending, RawLane
from fedmcp.shared import chunks, jsonrpc, metrics
from fedmcp.shared.config import BackingServer
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter, ValidationError

stdio_lines.install()  # long lines from stdio servers in linear time (an SDK 2.3 reader is quadratic)

log = structlog.get_logger("fedmcp.adapter.connection")

Sink = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives a request-scoped notification (method, params) for the front client."""
Notice = Callable[[str, dict[str, Any]], bool]
"""Sends a request-scoped notification (method, params) for the front client now; False if it cannot."""
Asker = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends a server-to-client request (method, params) to the front client; returns its result or raises MCPError."""


LIST_NOTIFICATION_KINDS: dict[type, str] = {
    types.ToolListChangedNotification: "tools",
    types.PromptListChangedNotification: "prompts",
    types.ResourceListChangedNotification: "resources",
}
LIST_EVENT_KINDS = {"ToolsListChanged": "tools", "PromptsListChanged": "prompts", "ResourcesListChanged": "resources"}
"""`subscriptions/listen` event classes (mcp.shared.subscriptions) by name."""


@dataclass
class CallHooks:
    """How one in-flight call reaches back to its front client."""

    sink: Sink | None = None
    log_level: str | None = None
    ask: Asker | None = None
    notice: Notice | None = None
    """Sends a notification at once (so it keeps its place before the result); False when it cannot
    (too large for one message): then `sink` gets it."""


class _Notification(msgspec.Struct):
    method: str
    params: dict[str, Any]


_log_line = msgspec.json.Decoder(_Notification)

RAW_METHODS = frozenset(("tools/call", "resources/read", "prompts/get"))
"""Sent on a stdio server's raw lane (when no progress is asked for): their results go to the bus as they came."""
Result = dict[str, Any] | msgspec.Raw
"""A result as plain JSON, or as the server's own bytes when the raw lane carried it."""


class BackendUnavailable(Exception):
    """The backing server is not connected (starting, crashed, restarting)."""


class BackingConnection:
    def __init__(
        self,
        name: str,
        config: BackingServer,
        mode: str,
        *,
        on_connected: Callable[[Client], Awaitable[None]] | None = None,
        on_list_changed: Callable[[str], None] | None = None,
        on_resource_updated: Callable[[str], Awaitable[None]] | None = None,
        on_session: Callable[[Client], Coroutine[Any, Any, None]] | None = None,
        once: bool = False,
        restart: bool = True,
        dedicated: bool = False,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        probe_interval: float = 5.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.config = config
        self.mode = mode
        self._on_connected = on_connected
        self._on_list_changed = on_list_changed
        self._on_resource_updated = on_resource_updated
        self._on_session = on_session
        self._once = once
        self._restart = restart
        """False: a lost session is not replaced (its state would be gone without anyone noticing)."""
        self.dedicated = dedicated
        """Every call on this session comes from one front session."""
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._probe_interval = probe_interval
        self._connect_timeout = connect_timeout
        self.client: Client | None = None
        self._ready = anyio.Event()
        self._lost = anyio.Event()
        self.failed = False
        """Set when a `once` connection could not be established (e.g. a modern-only server refusing `initialize`)."""
        self.restarts = 0
        self.state = "starting"
        self.in_flight: dict[int, CallHooks] = {}
        self._lane: RawLane | None = None
        """The current stdio child's raw lane (raw_lane.py); None for HTTP servers and between sessions."""
        self._http: HttpLane | None = None
        """The HTTP lane (http_lane.py) of a session over HTTP; None for stdio servers and between sessions."""
        self._http_session: str | None = None
        """The `Mcp-Session-Id` the HTTP server gave this session (handshake era), as its responses carry it."""
        self._ids = 0
        self._closing = False
        self.finished = anyio.Event()
        """Set when `run` has returned (closed on purpose, or a `once` session that failed)."""

    def close(self) -> None:
        """End the session gracefully (an HTTP session is deleted, a stdio child sees EOF)."""
        self._closing = True
        self._lost.set()

    @property
    def protocol_version(self) -> str | None:
        return self.client.protocol_version if self.client is not None else None

    def _reset_ready(self) -> None:
        # Replace only a set event: a waiter holding an unset one must be woken by the next set().
        if self._ready.is_set():
            self._ready = anyio.Event()

    async def wait_ready(self) -> None:
        while self.client is None and not self.failed:
            await self._ready.wait()

    # -- supervision ------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._supervise()
        finally:
            self.finished.set()

    async def _supervise(self) -> None:
        backoff = self._backoff_initial
        while True:
            started = anyio.current_time()
            connected = False
            try:
                connected = await self._session()
            except Exception as exc:  # any failure of the child or the link: restart it
                log.warning("backing server connection failed", server=self.name, mode=self.mode, error=repr(exc))
            self.client = None
            self.state = "restarting"
            if self._closing:
                self.state = "closed"
                return
            if self._once and not connected:
                self.failed = True
                self._ready.set()
                return
            if not self._restart:
                self.state = "lost" if connected else "failed"
                self.failed = True
                self._ready.set()
                return
            self._reset_ready()
            self.restarts += 1
            metrics.BACKING_RESTARTS.labels(self.name).inc()
            if anyio.current_time() - started > 30:
                backoff = self._backoff_initial  # it ran fine for a while: start the backoff over
            log.info("restarting backing server", server=self.name, mode=self.mode, in_seconds=backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    def _target(self, stack: AsyncExitStack) -> str | StdioServerParameters | Any:
        cfg = self.config
        if cfg.command is not None:
            env = dict(os.environ) if cfg.inherit_env else get_default_environment()
            env.update(cfg.env)
            return StdioServerParameters(command=cfg.command, args=cfg.args, env=env, cwd=cfg.cwd)
        assert cfg.url is not None
        self._http_session = None

        async def session_of(response: httpx2.Response) -> None:  # for the HTTP lane's requests
            self._http_session = response.headers.get(MCP_SESSION_ID) or self._http_session

        http = httpx2.AsyncClient(
            headers=cfg.headers, timeout=httpx2.Timeout(30.0, read=300.0), event_hooks={"response": [session_of]}
        )
        stack.push_async_callback(http.aclose)
        # The SDK caps one SSE event at 1 MiB; fedmcp carries results up to its own limit.
        return streamable_http_client(cfg.url, http_client=http, max_sse_event_size=chunks.DEFAULT_LIMIT)

    async def _session(self) -> bool:
        """Run one session until it is lost; True if it was ever established."""
        # The handshake gets a deadline; once connected the scope is relaxed. (A timeout
        # scope around only the client's __aenter__ would be exited while the client's
        # own task group is still open.)
        connected = False
        lanes: list[RawLane] = []
        opened = OPENED.set(lanes.append)
        with anyio.CancelScope(deadline=anyio.current_time() + self._connect_timeout) as scope:
            async with AsyncExitStack() as stack:
                client = Client(
                    self._target(stack),
                    mode=self.mode,
                    cache=None,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    sampling_callback=self._on_sampling,
                    elicitation_callback=self._on_elicitation,
                    list_roots_callback=self._on_list_roots,
                )
                try:
                    await stack.enter_async_context(client)
                finally:
                    OPENED.reset(opened)
                if self.mode in MODERN_PROTOCOL_VERSIONS:
                    # A pinned version skips the probe; ask for the real capabilities anyway.
                    raw = await client.session.send_discover(self.mode)
                    client.session.adopt(types.DiscoverResult.model_validate(raw))
                self._lost = anyio.Event()
                if self._closing:  # closed while the handshake ran
                    self._lost.set()
                if self._on_connected is not None:
                    await self._on_connected(client)
                await self._open_log_gate(client)
                scope.deadline = math.inf
                connected = True
                metrics.POOL_SIZE.labels(self.name).inc()
                self.client = client
                self._lane = lanes[-1] if lanes else None
                if self._lane is not None:
                    self._lane.on_log = self._lane_log
                if self.config.url is not None:
                    self._http = HttpLane(self.config.url, self.config.headers)
                    stack.push_async_callback(self._close_http, self._http)
                self.state = "ready"
                self._ready.set()
                log.info("backing server connected", server=self.name, protocol_version=client.protocol_version)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._probe, client)
                    if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                        tg.start_soon(self._listen_modern, client)
                    if self._on_session is not None:
                        tg.start_soon(self._on_session, client)
                    await self._lost.wait()
                    self._lane = None
                    tg.cancel_scope.cancel()
        self._lane = None
        if connected:
            metrics.POOL_SIZE.labels(self.name).dec()
        if scope.cancelled_caught and not connected:
            raise TimeoutError(f"no handshake with the backing server within {self._connect_timeout}s")
        return connected

    async def _close_http(self, lane: HttpLane) -> None:
        if self._http is lane:
            self._http = None
        with anyio.CancelScope(shield=True):  # the session may end by cancellation; the sockets close anyway
            await lane.close()

    async def _open_log_gate(self, client: Client) -> None:
        """Handshake-era servers log per session: take everything, filter per request here."""
        caps = client.server_capabilities
        if caps.logging is not None and client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            try:
                await raw_request(client, "logging/setLevel", {"level": "debug"}, timeout=10)
            except MCPError as exc:
                log.info("backing server refused logging/setLevel", server=self.name, error=exc.error.message)

    async def _probe(self, client: Client) -> None:
        """Notice a backing server that died while idle."""
        while True:
            await anyio.sleep(self._probe_interval)
            if self.in_flight:
                continue  # calls in flight notice a dead server themselves; a probe would queue behind them
            method = "ping" if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS else "server/discover"
            try:
                await raw_request(client, method, None, timeout=10)
            except MCPError as exc:
                if exc.error.code == jsonrpc.METHOD_NOT_FOUND:
                    continue
                self._lost.set()
                return

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
                async for event in sub:
                    kind = LIST_EVENT_KINDS.get(type(event).__name__)
                    if kind is not None and self._on_list_changed is not None:
                        self._on_list_changed(kind)
        except Exception as exc:  # the server may not serve listen after all; polling is not worth it
            log.info("backing server has no usable subscriptions/listen", server=self.name, error=repr(exc))

    # -- what the server sends outside responses ---------------------------------
    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        # On 2026-07-28 sessions these also arrive on the listen streams, which are the source there.
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return
        kind = LIST_NOTIFICATION_KINDS.get(type(message))
        if kind is not None and self._on_list_changed is not None:
            self._on_list_changed(kind)
        if isinstance(message, types.ResourceUpdatedNotification) and self._on_resource_updated is not None:
            await self._on_resource_updated(str(message.params.uri))

    def _sole_call(self) -> CallHooks | None:
        """The call that what the server sends outside a response belongs to: the one in flight; on a
        dedicated session, where every call is the same front session's, the latest one."""
        if self.dedicated and self.in_flight:
            return self.in_flight[max(self.in_flight)]
        return next(iter(self.in_flight.values())) if len(self.in_flight) == 1 else None

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        await _deliver_log(self._sole_call(), params)

    def _lane_log(self, line: bytes) -> bool:
        """A log message line seen by the raw lane, delivered as `_on_log` would, but now (True), so a
        response the lane takes after it cannot overtake it; False leaves it to the SDK's reader."""
        call = self._sole_call()
        if call is None or call.notice is None:
            return False
        try:
            note = _log_line.decode(line)
            if note.method != "notifications/message":
                return False
            params = types.LoggingMessageNotificationParams.model_validate(note.params)
        except (msgspec.DecodeError, msgspec.ValidationError, ValidationError):
            return False
        if not jsonrpc.level_allows(call.log_level, params.level):
            return True  # not wanted: dropped, as `_on_log` drops it
        dumped = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        return call.notice("notifications/message", dumped)

    async def _ask_front(self, method: str, params: BaseModel) -> dict[str, Any] | types.ErrorData:
        """A question of the server's that came outside any call's stream: for the call it belongs to."""
        dumped = params.model_dump(mode="json", by_alias=True, exclude_none=True)
        return await _ask_call(self._sole_call(), method, dumped, self.name, several=len(self.in_flight) > 1)

    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        answer = await self._ask_front("sampling/createMessage", params)
        return answer if isinstance(answer, types.ErrorData) else _sampling_result(answer)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        answer = await self._ask_front("elicitation/create", params)
        return answer if isinstance(answer, types.ErrorData) else types.ElicitResult.model_validate(answer)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        answer = await self._ask_front("roots/list", types.RequestParams())
        return answer if isinstance(answer, types.ErrorData) else types.ListRootsResult.model_validate(answer)

    # -- requests -----------------------------------------------------------------
    def express(self, method: str) -> RawLane | None:
        """The raw lane, when `submit` can take `method` now (connected, a stdio server's lane, the pipe open)."""
        lane = self._lane
        if method in RAW_METHODS and self.client is not None and lane is not None and lane.writable():
            return lane
        return None

    def submit(
        self,
        lane: RawLane,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        hooks: CallHooks,
        capabilities: Mapping[str, Any] | None,
        done: Callable[[msgspec.Raw | MCPError | BackendUnavailable | None], None],
    ) -> Pending:
        """`send` on the raw lane (from `express`) without a task: the request is written now and `done`
        gets the outcome later (None: cancelled through the returned handle). Not for calls that want
        progress; one that wants log messages needs `hooks.notice`."""
        client = self.client
        assert client is not None
        params = _lane_params(client, params, capabilities, hooks)
        self._ids += 1
        call_id = self._ids
        self.in_flight[call_id] = hooks

        def finished(outcome: Outcome) -> None:
            del self.in_flight[call_id]
            if isinstance(outcome, MCPError) and outcome.error.code == jsonrpc.CONNECTION_CLOSED_SDK:
                self._dead(client)
                done(BackendUnavailable("crashed"))
                return
            done(outcome)

        return lane.submit(method, params, timeout=timeout, done=finished)

    async def _http_request(
        self,
        http: HttpLane,
        client: Client,
        method: str,
        params: dict[str, Any] | None,
        timeout: float,
        hooks: CallHooks,
        capabilities: Mapping[str, Any] | None,
        maps: HeaderMaps,
    ) -> msgspec.Raw:
        """One call on the HTTP lane. What the server sends on the call's stream is this call's, however
        many are in flight: its log messages go to the call's sink, its questions to the call's client."""
        version = client.protocol_version
        body = _lane_params(client, params, capabilities, hooks)
        if version in MODERN_PROTOCOL_VERSIONS:
            assert body is not None
            headers = hop_headers(version, method, body, maps)
        else:
            headers = {MCP_PROTOCOL_VERSION_HEADER: version}
            if self._http_session is not None:
                headers[MCP_SESSION_ID] = self._http_session

        async def on_note(note_method: str, note: dict[str, Any]) -> None:
            if note_method == "notifications/message":
                try:
                    validated = types.LoggingMessageNotificationParams.model_validate(note)
                except ValidationError:
                    return  # malformed: dropped, as the SDK's session drops it
                await _deliver_log(hooks, validated)
            elif note_method != "notifications/progress":  # progress: not asked for (the SDK's way is)
                try:
                    notification = types.server_notification_adapter.validate_python(
                        {"method": note_method, "params": note}
                    )
                except ValidationError:
                    return
                await self._on_message(notification)

        async def on_request(req_method: str, req_params: dict[str, Any]) -> dict[str, Any]:
            """As the SDK's session answers it through the callbacks above: params and result checked."""
            shapes = _QUESTIONS.get(req_method)
            if shapes is None:
                raise MCPError(code=jsonrpc.METHOD_NOT_FOUND, message="Method not found")
            try:
                asked = shapes[0].validate_python(req_params)
            except ValidationError:
                raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Invalid {req_method} params") from None
            dumped = asked.model_dump(mode="json", by_alias=True, exclude_none=True) if asked is not None else {}
            answer = await _ask_call(hooks, req_method, dumped, self.name)
            if isinstance(answer, types.ErrorData):
                raise MCPError(code=answer.code, message=answer.message, data=answer.data)
            try:
                return shapes[1](answer).model_dump(mode="json", by_alias=True, exclude_none=True)
            except ValidationError:
                raise MCPError(code=jsonrpc.INTERNAL_ERROR, message=f"invalid answer to {req_method}") from None

        return await http.request(
            method, body, headers=headers, timeout=timeout, on_note=on_note, on_request=on_request
        )

    def _dead(self, client: Client) -> None:
        """`client`'s session is gone: nobody may use it from now on, not even before the supervisor has noticed."""
        if self.client is client:
            self.client = None
            self._reset_ready()
            self.state = "restarting"
        self._lost.set()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        wait_ready: float,
        hooks: CallHooks,
        progress: ProgressFnT | None,
        capabilities: Mapping[str, Any] | None,
        maps: HeaderMaps,
    ) -> Result:
        """One request on this session; MCPError for the server's errors, BackendUnavailable when down."""
        client = self.client
        if client is None:
            with anyio.move_on_after(max(0.0, wait_ready)):
                await self.wait_ready()
            client = self.client
            if client is None:
                raise BackendUnavailable(self.state)
        self._ids += 1
        call_id = self._ids
        self.in_flight[call_id] = hooks
        # Not when the call wants its log messages or progress: those go through the SDK's session,
        # and only its dispatcher keeps them in order ahead of the response they precede.
        # (The lane delivers log messages in order itself when the call can take them at once.)
        quiet = progress is None and (hooks.sink is None or hooks.log_level is None or hooks.notice is not None)
        lane = self._lane if client is self.client and quiet and method in RAW_METHODS else None
        http = self._http if client is self.client and progress is None and method in RAW_METHODS else None
        try:
            if lane is not None:
                return await lane.request(method, _lane_params(client, params, capabilities, hooks), timeout=timeout)
            if http is not None and http.usable:
                with contextlib.suppress(Redirected):  # nothing ran: the SDK's way follows the redirect
                    return await self._http_request(http, client, method, params, timeout, hooks, capabilities, maps)
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS and capabilities is not None:
                return await send_modern(
                    client,
                    method,
                    params,
                    timeout=timeout,
                    progress=progress,
                    capabilities=capabilities,
                    log_level=hooks.log_level if hooks.sink is not None else None,
                    maps=maps,
                )
            return await raw_request(client, method, params, timeout=timeout, progress=progress)
        except MCPError as exc:
            if exc.error.code == jsonrpc.CONNECTION_CLOSED_SDK:
                self._dead(client)
                raise BackendUnavailable("crashed") from exc
            raise
        except ValidationError as exc:
            log.warning("backing server returned an invalid result", server=self.name, method=method)
            raise MCPError(
                code=jsonrpc.INTERNAL_ERROR, message=f"server {self.name!r} returned an invalid {method} result"
            ) from exc
        finally:
            del self.in_flight[call_id]


async def _ask_call(
    call: CallHooks | None, method: str, params: dict[str, Any], server: str, *, several: bool = False
) -> dict[str, Any] | types.ErrorData:
    """Ask `call`'s front client; any failure is an error for the server, never a hang."""
    if call is None or call.ask is None:
        reason = "several calls in flight on one backing session" if several else "no call in flight"
        return types.ErrorData(code=jsonrpc.INTERNAL_ERROR, message=f"fedmcp cannot route {method}: {reason}")
    try:
        return await call.ask(method, params)
    except MCPError as exc:
        return exc.error
    except Exception as exc:  # the bus or the client failed to answer: the server gets an error, not a hang
        log.info("server-to-client request got no answer", server=server, method=method, error=repr(exc))
        return types.ErrorData(code=jsonrpc.INTERNAL_ERROR, message=f"the client did not answer {method}")


def _sampling_result(answer: dict[str, Any]) -> types.CreateMessageResult | types.CreateMessageResultWithTools:
    if isinstance(answer.get("content"), list):
        return types.CreateMessageResultWithTools.model_validate(answer)
    return types.CreateMessageResult.model_validate(answer)


_QUESTIONS: dict[str, tuple[TypeAdapter[Any], Callable[[dict[str, Any]], BaseModel]]] = {
    "sampling/createMessage": (TypeAdapter(types.CreateMessageRequestParams), _sampling_result),
    "elicitation/create": (TypeAdapter(types.ElicitRequestParams), types.ElicitResult.model_validate),
    "roots/list": (TypeAdapter(types.RequestParams | None), types.ListRootsResult.model_validate),
}
"""What a server may ask the client, as the SDK's session checks it: the params' shape, the result's."""


async def _deliver_log(call: CallHooks | None, params: types.LoggingMessageNotificationParams) -> None:
    """A log message for `call`, if it takes log messages at that level."""
    if call is not None and call.sink is not None and jsonrpc.level_allows(call.log_level, params.level):
        await call.sink("notifications/message", params.model_dump(mode="json", by_alias=True, exclude_none=True))


def _lane_params(
    client: Client, params: dict[str, Any] | None, capabilities: Mapping[str, Any] | None, hooks: CallHooks
) -> dict[str, Any] | None:
    """A request's params for the raw lane: with this hop's 2026-07-28 envelope on a session of that era
    (the SDK writes it on its own path)."""
    version = client.protocol_version
    if version not in MODERN_PROTOCOL_VERSIONS:
        return params
    return enveloped(version, params, capabilities or {}, hooks.log_level if hooks.sink is not None else None)


async def raw_request(
    client: Client,
    method: str,
    params: dict[str, Any] | None,
    *,
    timeout: float,
    progress: ProgressFnT | None = None,
) -> dict[str, Any]:
    """A request through the SDK's public path (its own envelope), result kept as plain JSON."""
    request = types.Request[dict[str, Any] | None, str](method=method, params=params)
    result = await client.session.send_request(
        request, jsonrpc.RawResult, request_read_timeout_seconds=timeout, progress_callback=progress
    )
    return result.root
