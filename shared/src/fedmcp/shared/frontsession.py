"""Handshake-era front sessions, held by the bus rather than by one edge.

A session's state (negotiated version, the client's `initialize` params, log level,
resource subscriptions, owner) is a record in the region's `sessions` bucket, so any
edge replica serves any request of the session. What its GET stream carries
(list changes, resource updates) goes through the region's feed stream, so a client
that reconnects to another edge with `Last-Event-ID` gets every event exactly once.

    record = SessionRecord(id=sid, principal="alice", protocol_version="2025-11-25", client={...})
    await kv.put(record.id, encode(record))
    await open_feed(js, subjects, region, create=True)        # managers; edges bind
"""

from __future__ import annotations

import time

import msgspec
from fedmcp.shared import buckets
from fedmcp.shared.buckets import Region
from fedmcp.shared.envelopes import JSON
from fedmcp.shared.subjects import Subjects
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, Placement, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

SESSION_TTL = 2 * 3600.0
"""Seconds a session record lives without being written; edges rewrite it while the session is used."""
FEED_MAX_AGE = 15 * 60.0
"""How long the feed keeps events for clients that come back with `Last-Event-ID`."""
FEED_DUPLICATE_WINDOW = 120.0
EVENT_ID_PREFIX = "f-"
"""SSE event ids of the GET stream: `f-<feed stream sequence>`; other ids belong to POST streams."""


class SessionRecord(msgspec.Struct, kw_only=True):
    id: str
    principal: str
    """Who opened the session: only the same principal may use it, on any edge."""
    protocol_version: str
    client: JSON
    """The client's `initialize` params as sent (capabilities, clientInfo)."""
    log_level: str | None = None
    subscriptions: list[str] = msgspec.field(default_factory=list)
    """Resource URIs the client subscribed to with `resources/subscribe`."""
    written: float = 0.0
    """When an edge last wrote the record (time.time())."""

    def stamped(self) -> SessionRecord:
        return msgspec.structs.replace(self, written=time.time())


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SessionRecord)


def encode(record: SessionRecord) -> bytes:
    return _encoder.encode(record)


def decode(raw: bytes) -> SessionRecord:
    return _decoder.decode(raw)


def event_id(seq: int) -> str:
    return f"{EVENT_ID_PREFIX}{seq}"


def feed_seq(last_event_id: str | None) -> int | None:
    """The feed sequence a GET stream's `Last-Event-ID` names; None when it names no feed event."""
    if not last_event_id or not last_event_id.startswith(EVENT_ID_PREFIX):
        return None
    digits = last_event_id[len(EVENT_ID_PREFIX) :]
    return int(digits) if digits.isdigit() and len(digits) < 20 else None


async def open_sessions(
    js: JetStreamContext, subjects: Subjects, region: Region, *, create: bool, patience: float = 30.0
) -> KeyValue:
    return await buckets.open_bucket(
        js, subjects, buckets.SESSIONS, region, create=create, patience=patience, max_age=SESSION_TTL
    )


def feed_config(subjects: Subjects, region: Region) -> StreamConfig:
    return StreamConfig(
        name=subjects.feed_stream(region.name),
        subjects=[subjects.feed_all(region.name)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=FEED_MAX_AGE,
        duplicate_window=FEED_DUPLICATE_WINDOW,
        num_replicas=region.replicas,
        placement=Placement(cluster=region.cluster) if region.cluster else None,
        allow_direct=True,
    )


async def open_feed(
    js: JetStreamContext, subjects: Subjects, region: Region, *, create: bool, patience: float = 30.0
) -> str:
    """Bind to (or, with `create`, make) the region's feed stream; returns its name."""
    config = feed_config(subjects, region)
    await buckets.open_stream(js, config, create=create, patience=patience)
    return config.name or ""
