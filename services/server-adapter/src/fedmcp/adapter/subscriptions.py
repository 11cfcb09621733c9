"""Resource subscriptions to the backing server, reference-counted across edges.

Edges send `resources/subscribe` and `resources/unsubscribe` over the bus (one
per edge and URI, however many clients there subscribe); the adapter keeps
one backing subscription per URI while anyone wants it, and publishes every
update on `evt.resource.<server>` for all edges to fan out.

A handshake-era backing session gets `resources/subscribe`/`unsubscribe`; a
2026-07-28 session gets one `subscriptions/listen` stream whose
`resourceSubscriptions` is reopened whenever the set of URIs changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import structlog
from fedmcp.adapter.connection import raw_request
from mcp import Client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

log = structlog.get_logger("fedmcp.adapter.subscriptions")


class ResourceSubscriptions:
    def __init__(self, server: str, publish: Callable[[str], Awaitable[None]]) -> None:
        self.server = server
        self._publish = publish
        self.counts: Counter[str] = Counter()
        self._changed = anyio.Event()
        self._empty_changed = anyio.Event()
        self._listening: frozenset[str] = frozenset()
        self._listen_changed = anyio.Event()

    async def updated(self, uri: str) -> None:
        if self.counts[uri] > 0:
            await self._publish(uri)

    async def subscribe(self, client: Client, uri: str) -> None:
        self.counts[uri] += 1
        if self.counts[uri] == 1:
            if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                await raw_request(client, "resources/subscribe", {"uri": uri}, timeout=10)
                return
            self._reopen()
            # Answer only once the listen stream carries the URI: no replay exists for
            # an update that happens in between.
            with anyio.move_on_after(10):
                while uri not in self._listening:
                    await self._listen_changed.wait()

    async def unsubscribe(self, client: Client, uri: str) -> None:
        if self.counts[uri] <= 0:
            return
        self.counts[uri] -= 1
        if self.counts[uri] == 0:
            del self.counts[uri]
            if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                await raw_request(client, "resources/unsubscribe", {"uri": uri}, timeout=10)
            self._reopen()

    def _reopen(self) -> None:
        self._changed.set()
        self._empty_changed.set()
        self._empty_changed = anyio.Event()

    async def wait_empty(self) -> None:
        """Until no URI is subscribed (used by drains and tests)."""
        while self.counts:
            await self._empty_changed.wait()

    def _set_listening(self, uris: frozenset[str]) -> None:
        self._listening = uris
        self._listen_changed.set()
        self._listen_changed = anyio.Event()

    async def listen_modern(self, client: Client) -> None:
        """Keep one listen stream open for exactly the URIs someone wants (2026-07-28 sessions)."""
        while True:
            self._changed = anyio.Event()
            uris = sorted(self.counts)
            if not uris:
                await self._changed.wait()
                continue
            try:
                async with anyio.create_task_group() as tg:

                    async def reopen_on_change() -> None:
                        await self._changed.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(reopen_on_change)
                    async with client.listen(resource_subscriptions=uris) as sub:
                        self._set_listening(frozenset(uris))
                        async for event in sub:
                            uri = getattr(event, "uri", None)
                            if isinstance(uri, str):
                                await self.updated(uri)
                    tg.cancel_scope.cancel()
            except Exception as exc:  # the stream failed: try again when the set changes
                log.info("resource listen stream ended", server=self.server, error=repr(exc))
                await self._changed.wait()
