"""The session feed: what handshake-era GET streams carry, through the region's JetStream stream.

Every edge publishes each list change and resource update it sees; `Nats-Msg-Id`
(the catalog revision, the adapter's event id) lets the stream keep one copy. So an
event is in the feed while any edge of the region is up, whichever edge a session's
client happens to be connected to, and a client that comes back with `Last-Event-ID`
(to any edge) is replayed exactly what it missed, in order.

One live consumer per edge fans out to that edge's open GET streams; a resume reads
the missed span with direct gets and then continues on the live fan-out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fedmcp.shared.buckets import Region
from fedmcp.shared.subjects import Subjects
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

log = structlog.get_logger("fedmcp.edge.feed")

MSG_ID = "Nats-Msg-Id"
LIST = "list"
RESOURCE = "resource"
BUFFER = 1000
"""Events a GET stream may fall behind by; a slower client is cut off and resumes with Last-Event-ID."""
TIMEOUT = 5.0


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    kind: str
    """LIST (`name`: "tools", "prompts" or "resources") or RESOURCE (`name`: the server, `uri` set)."""
    name: str
    uri: str = ""


class Feed:
    def __init__(self, js: JetStreamContext, subjects: Subjects, region: Region, stream: str) -> None:
        self.js = js
        self.subjects = subjects
        self.region = region.name
        self.stream = stream
        self._listeners: set[MemoryObjectSendStream[FeedEvent]] = set()

    # -- writing: every edge, deduplicated by the stream ----------------------
    async def list_changed(self, kinds: frozenset[str], revision: int) -> None:
        for kind in sorted(kinds):
            await self._publish(self.subjects.feed(self.region, LIST, kind), b"", f"catalog-{revision}-{kind}")

    async def resource_updated(self, server: str, uri: str, event_id: str) -> None:
        await self._publish(self.subjects.feed(self.region, RESOURCE, server), uri.encode(), event_id)

    async def _publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        try:
            with anyio.fail_after(TIMEOUT):
                await self.js.publish(subject, payload, headers={MSG_ID: msg_id})
        except Exception as exc:  # JetStream unavailable: the live edges' own copies may still land
            log.warning("feed event not stored", subject=subject, error=repr(exc))

    # -- reading ----------------------------------------------------------------
    def _event(self, subject: str, seq: int, data: bytes) -> FeedEvent | None:
        parts = subject.rsplit(".", 2)
        if len(parts) != 3 or parts[1] not in (LIST, RESOURCE):
            return None
        return FeedEvent(seq, parts[1], parts[2], data.decode(errors="replace") if parts[1] == RESOURCE else "")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The edge's one live consumer, fanned out to its open GET streams."""
        sub = await self.js.subscribe(
            self.subjects.feed_all(self.region),
            stream=self.stream,  # named: a lookup by subject needs STREAM.NAMES, which edges may not ask
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        task_status.started()
        try:
            async for msg in sub.messages:
                self._fan_out(msg)
        finally:
            with anyio.move_on_after(2, shield=True):
                await sub.unsubscribe()

    def _fan_out(self, msg: Msg) -> None:
        event = self._event(msg.subject, msg.metadata.sequence.stream, msg.data)
        if event is None:
            return
        for listener in list(self._listeners):
            try:
                listener.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._listeners.discard(listener)  # too slow or gone: its stream ends, the client resumes
                listener.close()

    @asynccontextmanager
    async def listen(self, after: int | None) -> AsyncIterator[MemoryObjectReceiveStream[FeedEvent]]:
        """The feed's events for one GET stream: those after sequence `after` (a resume), then live
        ones; only live ones when `after` is None. Ends when the reader falls too far behind."""
        send, receive = anyio.create_memory_object_stream[FeedEvent](BUFFER)
        self._listeners.add(send)
        try:
            if after is None:
                yield receive
                return
            out, into = anyio.create_memory_object_stream[FeedEvent](BUFFER)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._resume, after, receive, out)
                yield into
                tg.cancel_scope.cancel()
        finally:
            self._listeners.discard(send)
            send.close()

    async def _resume(
        self, after: int, live: MemoryObjectReceiveStream[FeedEvent], out: MemoryObjectSendStream[FeedEvent]
    ) -> None:
        """Missed events first (listening began before `last` was read, so nothing falls in between),
        then live ones past them."""
        async with out:
            try:
                with anyio.fail_after(TIMEOUT):
                    last = (await self.js.stream_info(self.stream)).state.last_seq
                seq = after + 1
                while seq <= last:
                    try:
                        with anyio.fail_after(TIMEOUT):
                            raw = await self.js.get_msg(
                                self.stream,
                                seq=seq,
                                subject=self.subjects.feed_all(self.region),
                                next=True,
                                direct=True,
                            )
                    except NotFoundError:
                        break
                    if raw.seq is None or raw.seq > last:
                        break
                    event = self._event(raw.subject or "", raw.seq, raw.data or b"")
                    if event is not None:
                        await out.send(event)
                    seq = raw.seq + 1
                async for event in live:
                    if event.seq > last:
                        await out.send(event)
            except anyio.BrokenResourceError:
                return  # the GET stream reading `out` ended
