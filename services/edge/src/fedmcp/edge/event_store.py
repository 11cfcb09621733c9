"""Resumability for handshake-era POST streams: event ids and `Last-Event-ID` replay.

In memory and bounded: each edge keeps the most recent events of its own
streams, so a client that reconnects to the same edge loses nothing that is
still held (SEP-1699 polling). A POST stream belongs to the call behind it, which
lives and dies with its edge; GET streams, which outlive edges, come from the
session feed instead (feed.py).

The SDK names a POST stream by its request id, and every client numbers its requests
alike, so one edge's store is shared through per-session views (`scoped`): a resume
replays its own session's stream, never another session's that has the same id.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage

MAX_EVENTS = 10_000
MAX_PER_STREAM = 1_000


class MemoryEventStore(EventStore):
    def __init__(self, *, max_events: int = MAX_EVENTS, max_per_stream: int = MAX_PER_STREAM) -> None:
        self._max_events = max_events
        self._max_per_stream = max_per_stream
        self._seq = itertools.count(1)
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._streams: dict[StreamId, deque[EventId]] = {}

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{next(self._seq)}"
        self._events[event_id] = (stream_id, message)
        stream = self._streams.setdefault(stream_id, deque())
        stream.append(event_id)
        if len(stream) > self._max_per_stream:
            self._events.pop(stream.popleft(), None)
        while len(self._events) > self._max_events:
            old_id, (old_stream, _) = self._events.popitem(last=False)
            ids = self._streams.get(old_stream)
            if ids and ids[0] == old_id:
                ids.popleft()
                if not ids:
                    del self._streams[old_stream]
        return event_id

    def scoped(self, session_id: str) -> EventStore:
        """The view of one session's transport: its stream ids are its own."""
        return _SessionEvents(self, f"{session_id}/")

    def stream_of(self, event_id: EventId) -> StreamId | None:
        found = self._events.get(event_id)
        return found[0] if found is not None else None

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        found = self._events.get(last_event_id)
        if found is None:
            return None
        stream_id = found[0]
        after = int(last_event_id)
        for event_id in list(self._streams.get(stream_id, ())):
            if int(event_id) <= after:
                continue
            message = self._events.get(event_id, (stream_id, None))[1]
            if message is not None:  # priming events carry no message
                await send_callback(EventMessage(message, event_id))
        return stream_id


class _SessionEvents(EventStore):
    def __init__(self, store: MemoryEventStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return await self._store.store_event(self._prefix + stream_id, message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = self._store.stream_of(last_event_id)
        if stream is None or not stream.startswith(self._prefix):
            return None  # unknown, or another session's event: nothing to replay
        await self._store.replay_events_after(last_event_id, send_callback)
        return stream[len(self._prefix) :]
