"""Control-plane envelopes: what adapters announce and what the registry stores.

MCP objects (tools, resources, ...) stay plain JSON mappings: fedmcp routes on
a few of their fields and passes the rest through untouched.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import msgspec

JSON = dict[str, Any]


class Freshness(msgspec.Struct, frozen=True):
    """A 2026-07-28 caching hint (`ttlMs`, `cacheScope`). Absent hints read as "0 ms, private"."""

    ttl_ms: int = 0
    scope: str = "private"

    @classmethod
    def of(cls, result: JSON) -> Freshness:
        ttl = result.get("ttlMs")
        scope = result.get("cacheScope")
        return cls(ttl if isinstance(ttl, int) and ttl >= 0 else 0, "public" if scope == "public" else "private")

    def wire(self) -> JSON:
        return {"ttlMs": self.ttl_ms, "cacheScope": self.scope}


def combine(a: Freshness | None, b: Freshness) -> Freshness:
    """Hints of parts of one aggregated result: the shortest lifetime; private if any part is."""
    if a is None:
        return b
    return Freshness(min(a.ttl_ms, b.ttl_ms), "public" if a.scope == b.scope == "public" else "private")


class Catalog(msgspec.Struct, kw_only=True):
    """Everything a backing server offers, read page by page by its adapter."""

    server: str
    protocol_version: str
    """MCP version the adapter negotiated with the backing server."""
    server_info: JSON = msgspec.field(default_factory=dict)
    capabilities: JSON = msgspec.field(default_factory=dict)
    instructions: str | None = None
    tools: list[JSON] = msgspec.field(default_factory=list)
    resources: list[JSON] = msgspec.field(default_factory=list)
    resource_templates: list[JSON] = msgspec.field(default_factory=list)
    prompts: list[JSON] = msgspec.field(default_factory=list)
    cache: dict[str, Freshness] = msgspec.field(default_factory=dict)
    """Caching hints the server gave for each list ("tools", "resources", ...); none from handshake-era servers."""
    list_changes: dict[str, int] = msgspec.field(default_factory=dict)
    """list_changed notifications the backing server has sent, per kind ("tools", "prompts",
    "resources"); a change the lists do not show (an item added and removed again) still
    reaches clients as list_changed."""

    def digest(self) -> str:
        """Content hash; replicas of one server announce equal catalogs."""
        body = msgspec.json.encode(msgspec.structs.replace(self, server_info={}), order="sorted")
        return hashlib.sha256(body).hexdigest()[:16]


class ServerSettings(msgspec.Struct, kw_only=True, frozen=True):
    """The routing-relevant part of a server's configuration, announced with it."""

    prefix: str | None = None
    """Name prefix for tools and prompts; None means the server name, "" means none."""
    affinity: str = "none"
    """"session": each handshake-era front session gets a backing session of its own, pinned to one
    adapter instance (see `Pin`); "none": any replica serves any request."""


class Instance(msgspec.Struct, kw_only=True):
    """One running adapter, as stored in the registry."""

    server: str
    instance: str
    region: str = "local"
    version: str = ""
    started_at: float = 0.0
    state: str = "ready"
    """ready | restarting | draining"""
    catalog_digest: str = ""
    settings: ServerSettings = ServerSettings()
    inflight: int = 0
    last_seen: float = 0.0


class Announce(msgspec.Struct, kw_only=True):
    instance: Instance
    catalog: Catalog | None = None
    """None while the backing server is not connected yet."""


class Heartbeat(msgspec.Struct, kw_only=True):
    instance: Instance


class Pin(msgspec.Struct, kw_only=True):
    """Value of `buckets.pin_key(session, server)` in the pins bucket: where a front session's own
    backing session of an `affinity = "session"` server lives. Written by edges only."""

    session: str
    server: str
    state: str = "pending"
    """pending (an edge is opening it: wait) | pinned (`instance` holds it) | expired (its instance or
    backing session was lost: every later request of the session to the server fails)"""
    instance: str = ""
    principal: str = ""
    """Who the front session belongs to; a request of another principal is refused."""
    edge: str = ""
    """The edge that wrote it last."""
    written: float = 0.0
    """time.time() of the last write; a pin in use is written again before the bucket's max age."""


class CatalogEntry(msgspec.Struct, kw_only=True):
    """Value of a server's key in the catalogs bucket, written by the manager."""

    catalog: Catalog
    digest: str
    settings: ServerSettings = ServerSettings()
    instances: list[str] = msgspec.field(default_factory=list)


encode = msgspec.json.Encoder().encode
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


T = TypeVar("T")


def decode(data: bytes, kind: type[T]) -> T:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    result: T = dec.decode(data)
    return result
