"""Resource subscriptions at the edge: which clients want which updates.

Handshake-era clients subscribe with `resources/subscribe`; 2026-07-28
clients name URIs in a `subscriptions/listen` request. Either way the edge
keeps one bus subscription per (server, URI) however many of its clients
want it, and fans each update from `evt.resource.<server>` out to exactly
those clients.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import anyio
import structlog
from fedmcp.edge.catalog import CatalogView
from fedmcp.edge.feed import Feed
from fedmcp.edge.upstream import Upstream
from fedmcp.shared import headers
from fedmcp.shared.subjects import Subjects
from mcp.server import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp_types import SubscriptionsListenRequestParams, SubscriptionsListenResult
from nats.aio.msg import Msg

log = structlog.get_logger("fedmcp.edge.subscriptions")

Key = tuple[str, str]
"""(server, URI)"""


class EdgeSubscriptions:
    def __init__(self, view: CatalogView, upstream: Upstream, events: InMemorySubscriptionBus) -> None:
        self.view = view
        self.upstream = upstream
        self.events = events
        self.sessions: dict[Key, dict[int, ServerSession]] = {}
        self.listens: Counter[Key] = Counter()
        self.feed_sessions: dict[Key, set[str]] = {}
        """Shared (any-edge) sessions subscribed through this edge; their updates travel in the feed."""
        self.feed: Feed | None = None

    async def start(self, subjects: Subjects) -> None:
        await self.upstream.nc.subscribe(subjects.resource_updated_all(), cb=self._on_update)

    def key_for(self, uri: str) -> Key | None:
        route = self.view.table.route_uri(uri)
        return (route.server, uri) if route is not None else None

    def _refs(self, key: Key) -> int:
        return len(self.sessions.get(key, {})) + self.listens[key] + len(self.feed_sessions.get(key, ()))

    async def _bus(self, key: Key, method: str) -> None:
        await self.upstream.request(key[0], method, {"uri": key[1]}, front_version="2025-11-25", timeout=10)

    async def add_session(self, key: Key, session_id: int, session: ServerSession) -> None:
        first = self._refs(key) == 0
        self.sessions.setdefault(key, {})[session_id] = session
        if first:
            await self._bus(key, "resources/subscribe")

    async def remove_session(self, key: Key, session_id: int) -> None:
        holders = self.sessions.get(key, {})
        if holders.pop(session_id, None) is not None and self._refs(key) == 0:
            self.sessions.pop(key, None)
            await self._bus(key, "resources/unsubscribe")

    async def add_feed_session(self, key: Key, session_id: str) -> None:
        first = self._refs(key) == 0
        self.feed_sessions.setdefault(key, set()).add(session_id)
        if first:
            await self._bus(key, "resources/subscribe")

    async def remove_feed_session(self, key: Key, session_id: str) -> None:
        holders = self.feed_sessions.get(key, set())
        if session_id in holders:
            holders.discard(session_id)
            if not holders:
                del self.feed_sessions[key]
            if self._refs(key) == 0:
                await self._bus(key, "resources/unsubscribe")

    def drop_feed_session(self, session_id: str) -> None:
        """The session ended: it no longer holds its subscriptions (the backing subscription stays
        until the next unsubscribe of that resource through this edge)."""
        for key in list(self.feed_sessions):
            self.feed_sessions[key].discard(session_id)
            if not self.feed_sessions[key]:
                del self.feed_sessions[key]

    async def add_listen(self, key: Key) -> None:
        first = self._refs(key) == 0
        self.listens[key] += 1
        if first:
            await self._bus(key, "resources/subscribe")

    async def remove_listen(self, key: Key) -> None:
        self.listens[key] -= 1
        if self.listens[key] <= 0:
            del self.listens[key]
            if self._refs(key) == 0:
                await self._bus(key, "resources/unsubscribe")

    async def _on_update(self, msg: Msg) -> None:
        server = msg.subject.rsplit(".", 1)[-1]
        uri = msg.data.decode(errors="replace")
        key = (server, uri)
        if self.feed is not None:
            event_id = (msg.headers or {}).get(headers.EVENT_ID) or uuid.uuid4().hex
            await self.feed.resource_updated(server, uri, event_id)
        for session_id, session in list(self.sessions.get(key, {}).items()):
            try:
                await session.send_resource_updated(uri)
            except Exception:  # that client is gone; forget its subscription
                await self.remove_session(key, session_id)
        if self.listens[key]:
            await self.events.publish(ResourceUpdated(uri=uri))


class ListenWithResources:
    """The SDK's listen handler, plus the backing subscriptions its resource URIs need."""

    def __init__(self, inner: ListenHandler, subscriptions: EdgeSubscriptions) -> None:
        self.inner = inner
        self.subscriptions = subscriptions

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        keys = [
            key
            for uri in params.notifications.resource_subscriptions or []
            if (key := self.subscriptions.key_for(str(uri))) is not None
        ]
        for key in keys:
            await self.subscriptions.add_listen(key)
        try:
            return await self.inner(ctx, params)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for key in keys:
                    await self.subscriptions.remove_listen(key)
