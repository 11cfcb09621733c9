"""The adapter's view of its backing server: sessions per protocol era, the catalog, and requests.

The primary session is negotiated in the configured era (default "auto":
the newest the server speaks). When a handshake-era client calls an HTTP
server whose primary session is 2026-07-28, the adapter opens a second,
handshake-era session to the same server if it accepts one, so the server
sees the protocol its client speaks (legacy-only APIs such as mid-call
sampling keep working). A stdio server gets no such companion by default:
it would be a second process with state of its own. Otherwise the edge
translates between the eras.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from fedmcp.adapter.connection import (
    Asker,
    BackendUnavailable,
    BackingConnection,
    CallHooks,
    Notice,
    Result,
    Sink,
    raw_request,
)
from fedmcp.adapter.envelope import HeaderMaps, header_maps
from fedmcp.adapter.raw_lane import RawLane
from fedmcp.adapter.subscriptions import ResourceSubscriptions
from fedmcp.shared import telemetry
from fedmcp.shared.config import BackingServer
from fedmcp.shared.envelopes import Catalog, Freshness, combine
from mcp import Client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)

__all__ = ["Asker", "Backend", "BackendUnavailable", "Sink", "read_catalog"]

log = structlog.get_logger("fedmcp.adapter.backend")

_MAX_PAGES = 1000
LIST_METHODS = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
    "prompts/list": "prompts",
}


class Backend:
    def __init__(
        self,
        name: str,
        config: BackingServer,
        on_catalog: Callable[[Catalog], Awaitable[None]],
        on_resource_updated: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._on_catalog = on_catalog
        self.subscriptions = ResourceSubscriptions(name, on_resource_updated or _ignore)
        self.primary = BackingConnection(
            name,
            config,
            config.era,
            on_connected=self._publish_catalog,
            on_list_changed=self._list_changed,
            on_resource_updated=self.subscriptions.updated,
            on_session=self._resubscribe,
        )
        # Extra sessions of the pool (`pool` > 1): plain sessions, the primary keeps the catalog.
        self.extra = [BackingConnection(name, config, config.era) for _ in range(max(0, config.pool - 1))]
        self._legacy: BackingConnection | None = None
        self._relist = anyio.Event()
        self._closing = anyio.Event()
        self._list_changes: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        self.catalog: Catalog | None = None
        self._maps: HeaderMaps = {}

    # -- the primary session's state, as the adapter reports it ------------------
    @property
    def state(self) -> str:
        return self.primary.state

    @property
    def restarts(self) -> int:
        return self.primary.restarts

    async def wait_ready(self) -> None:
        """Until the backing server is connected and its catalog read."""
        await self.primary.wait_ready()

    # -- catalog ------------------------------------------------------------------
    def _list_changed(self, kind: str) -> None:
        self._list_changes[kind] = self._list_changes.get(kind, 0) + 1
        self._relist.set()

    async def _publish_catalog(self, client: Client) -> None:
        catalog = await read_catalog(self.name, client)
        catalog.list_changes = dict(self._list_changes)
        self.catalog = catalog
        self._maps = header_maps(catalog.tools)
        await self._on_catalog(catalog)

    async def _relister(self) -> None:
        while True:
            await self._relist.wait()
            self._relist = anyio.Event()
            client = self.primary.client
            if client is not None:
                try:
                    await self._publish_catalog(client)
                except Exception as exc:  # a failed re-read keeps the last catalog
                    log.warning("re-reading the catalog failed", server=self.name, error=repr(exc))

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.primary.run)
            for session in self.extra:
                tg.start_soon(session.run)
            tg.start_soon(self._relister)
            await self._closing.wait()
            sessions = [s for s in (self.primary, *self.extra, self._legacy) if s is not None]
            for session in sessions:
                session.close()
            with anyio.move_on_after(5):
                for session in sessions:
                    await session.finished.wait()
            tg.cancel_scope.cancel()

    def close(self) -> None:
        """Close the backing sessions gracefully; `run` returns when they are closed."""
        self._closing.set()

    # -- resource subscriptions (ref-counted across edges) --------------------------
    async def _resubscribe(self, client: Client) -> None:
        """A new primary session: restore the subscriptions the old one held, then keep them."""
        if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            for uri in list(self.subscriptions.counts):
                await raw_request(client, "resources/subscribe", {"uri": uri}, timeout=10)
            return
        await self.subscriptions.listen_modern(client)

    async def subscribe(self, uri: str, *, unsubscribe: bool, wait_ready: float) -> dict[str, Any]:
        with anyio.move_on_after(max(0.0, wait_ready)):
            await self.primary.wait_ready()
        client = self.primary.client
        if client is None:
            raise BackendUnavailable(self.primary.state)
        if unsubscribe:
            await self.subscriptions.unsubscribe(client, uri)
        else:
            await self.subscriptions.subscribe(client, uri)
        return {}

    # -- requests -------------------------------------------------------------------
    def _pool_choice(self, front_version: str | None) -> tuple[BackingConnection, bool]:
        """The least busy connected session of the pool, and whether `front_version` wants the
        handshake-era companion instead (a handshake-era client of a 2026-07-28 session, when configured)."""
        primary = self.primary
        if self.extra:
            primary = min(
                (s for s in (self.primary, *self.extra) if s.client is not None),
                key=lambda s: len(s.in_flight),
                default=self.primary,
            )
        companion = self.config.era_companion
        if companion is None:
            companion = self.config.url is not None
        wants = (
            companion
            and front_version in HANDSHAKE_PROTOCOL_VERSIONS
            and primary.protocol_version in MODERN_PROTOCOL_VERSIONS
            and self.config.era == "auto"
        )
        return primary, bool(wants)

    def express(self, method: str, front_version: str | None) -> tuple[BackingConnection, RawLane] | None:
        """Where `method` goes without waiting for anything (connection.submit), or None: use `request`."""
        session, companion = self._pool_choice(front_version)
        if companion:
            return None
        lane = session.express(method)
        return None if lane is None else (session, lane)

    async def _session_for(self, front_version: str | None) -> BackingConnection:
        """The primary session, or for a handshake-era client of a 2026-07-28 session the
        handshake-era companion (opened on first use), when the server accepts one."""
        primary, companion = self._pool_choice(front_version)
        if not companion:
            return primary
        if self._legacy is None:
            assert self._tg is not None
            self._legacy = BackingConnection(
                self.name, self.config, "legacy", once=True, on_resource_updated=self.subscriptions.updated
            )
            self._tg.start_soon(self._legacy.run)
        with anyio.move_on_after(15):
            await self._legacy.wait_ready()
        if self._legacy.failed or self._legacy.client is None:
            return primary  # a 2026-07-28-only server: the edge translates instead
        return self._legacy

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float,
        wait_ready: float,
        sink: Sink | None = None,
        notice: Notice | None = None,
        log_level: str | None = None,
        ask: Asker | None = None,
        front_version: str | None = None,
        capabilities: Mapping[str, Any] | None = None,
        connection: BackingConnection | None = None,
    ) -> Result:
        """Send one request to the backing server and return its raw result; on `connection` (a front
        session's own, pinned.py) when given, else on a shared session.

        Raises MCPError for a JSON-RPC error from the server, BackendUnavailable
        when it is not connected within `wait_ready` seconds.
        """
        session = connection or await self._session_for(front_version)
        backing = session.protocol_version
        if front_version and backing and (front_version in MODERN) != (backing in MODERN):
            telemetry.event("era translation", {"mcp.front.version": front_version, "mcp.backing.version": backing})
        params, progress = take_progress(params, sink)
        hooks = CallHooks(sink=sink, log_level=log_level if sink is not None else None, ask=ask, notice=notice)
        return await session.send(
            method,
            params,
            timeout=timeout,
            wait_ready=wait_ready,
            hooks=hooks,
            progress=progress,
            capabilities=capabilities,
            maps=self._maps,
        )


async def _ignore(uri: str) -> None:
    pass


def take_progress(params: dict[str, Any] | None, sink: Sink | None) -> tuple[dict[str, Any] | None, ProgressFnT | None]:
    """Swap the front's progress token for one of this hop: the SDK mints its own token
    for the backing request, and its progress goes back up the reply stream."""
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
    offered: dict[str, bool | None] = {  # None: not declared, asked anyway
        "tools/list": caps.tools is not None,
        "resources/list": caps.resources is not None,
        "resources/templates/list": caps.resources is not None,
        "prompts/list": caps.prompts is not None,
    }
    lists: dict[str, list[dict[str, Any]]] = {}
    hints: dict[str, Freshness] = {}
    if not any(offered.values()):
        # A server that declares nothing may still serve tools (seen in the wild): ask for
        # them, briefly. Lists it does declare are the only ones asked otherwise, since some
        # servers never answer a method they do not know.
        offered["tools/list"] = None
    for method, key in LIST_METHODS.items():
        items: list[dict[str, Any]] = []
        declared = offered[method]
        if declared is not False:
            try:
                cursor: str | None = None
                for _ in range(_MAX_PAGES):
                    params = {"cursor": cursor} if cursor else None
                    page = await raw_request(client, method, params, timeout=30 if declared else 5)
                    items.extend(page.get(key) or [])
                    hints[key] = combine(hints.get(key), Freshness.of(page))
                    cursor = page.get("nextCursor")
                    if not cursor:
                        break
            except (MCPError, ValidationError, TimeoutError) as exc:
                # One broken list must not take the whole server out of the federation.
                level = log.warning if declared else log.info
                level("backing server list failed; treated as empty", server=name, method=method, error=str(exc))
                items = []
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
        cache=hints,
    )
