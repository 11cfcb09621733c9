"""The edge's live copy of the federation catalog, kept by watching the catalogs bucket.

Requests route from this in-memory table; nothing on the request path reads
KV or asks the manager.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog
from fedmcp.shared import envelopes, routing
from fedmcp.shared.envelopes import CatalogEntry
from fedmcp.shared.routing import RoutingTable
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.edge.catalog")

Listener = Callable[[frozenset[str]], Awaitable[None]]
"""Called with the kinds that changed: a subset of {"tools", "prompts", "resources"}."""


def changed_kinds(old: RoutingTable, new: RoutingTable) -> frozenset[str]:
    kinds = set()
    for server, entry in new.servers.items():
        before = old.servers.get(server)
        if before is not None:
            for kind, count in entry.catalog.list_changes.items():
                if count != before.catalog.list_changes.get(kind, 0):
                    kinds.add(kind)
    if old.tool_list != new.tool_list:
        kinds.add("tools")
    if old.prompt_list != new.prompt_list:
        kinds.add("prompts")
    if old.resource_list != new.resource_list or old.template_list != new.template_list:
        kinds.add("resources")
    return frozenset(kinds)


class CatalogView:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.table = routing.build({})
        self.loaded = anyio.Event()
        self._entries: dict[str, CatalogEntry] = {}
        self._listeners: list[Listener] = []
        self._changed = anyio.Event()
        self.revision = 0
        """The catalogs bucket's revision the table reflects: the same on every edge for the same table."""

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def wait_until(self, predicate: Callable[[RoutingTable], bool]) -> None:
        """Until the routing table satisfies `predicate`; woken by each catalog change."""
        while not predicate(self.table):
            await self._changed.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        watcher = await self.kv.watchall()
        task_status.started()
        try:
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    await self._rebuild()
                    self.loaded.set()
                    continue
                self.revision = max(self.revision, entry.revision or 0)
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._entries.pop(entry.key, None)
                else:
                    try:
                        self._entries[entry.key] = envelopes.decode(entry.value, CatalogEntry)
                    except Exception:
                        log.warning("unreadable catalog entry ignored", server=entry.key)
                        continue
                if self.loaded.is_set():
                    await self._rebuild()
        finally:
            with anyio.move_on_after(2, shield=True):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _rebuild(self) -> None:
        old, new = self.table, routing.build(self._entries)
        self.table = new
        self._changed.set()
        self._changed = anyio.Event()
        kinds = changed_kinds(old, new)
        for conflict in new.conflicts:
            if conflict not in old.conflicts:
                log.warning("catalog conflict", detail=conflict)
        if kinds:
            log.info("catalog changed", kinds=sorted(kinds), servers=len(new.servers), tools=len(new.tool_list))
            for listener in self._listeners:
                await listener(kinds)
