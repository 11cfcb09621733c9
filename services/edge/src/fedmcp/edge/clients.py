"""The handshake-era connections an edge serves, held weakly, with their `logging/setLevel` level.

List changes must reach every handshake-era client, and its log level applies to
every request of its session. The SDK hands handlers a per-request session
object, so the edge keys on the connection behind it (the SDK exposes no public
handle for it), weakly: when the SDK drops a closed connection the entry goes too.
"""

from __future__ import annotations

import weakref

from mcp.server.connection import Connection
from mcp.server.session import ServerSession
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

LIST_CHANGED = {
    "tools": "notifications/tools/list_changed",
    "prompts": "notifications/prompts/list_changed",
    "resources": "notifications/resources/list_changed",
}
DEFAULT_LEVEL = "debug"
"""Handshake-era semantics: a client that never set a level gets every message."""


def connection_of(session: ServerSession) -> Connection:
    connection: Connection = session._connection
    return connection


class LegacyClients:
    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._levels: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()

    def remember(self, session: ServerSession) -> None:
        if session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._connections.add(connection_of(session))

    def set_level(self, session: ServerSession, level: str) -> None:
        self._levels[connection_of(session)] = level

    def level(self, session: ServerSession) -> str:
        return self._levels.get(connection_of(session), DEFAULT_LEVEL)

    def __len__(self) -> int:
        return len(self._connections)

    async def list_changed(self, kinds: frozenset[str]) -> None:
        for connection in list(self._connections):
            try:
                for kind in sorted(kinds):
                    await connection.outbound.notify(LIST_CHANGED[kind], None)
            except Exception:  # the client is gone
                self._connections.discard(connection)
