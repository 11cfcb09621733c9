"""The region's handshake-era front sessions: a watched copy of the sessions bucket, and its writes.

Every edge keeps every record in memory (a few hundred bytes each), so routing a
request of a session that another edge opened costs no KV read, and a change made
on one edge (a log level, a subscription, the session's end) reaches the others in
milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from fedmcp.shared import buckets, frontsession
from fedmcp.shared.frontsession import SESSION_TTL, SessionRecord
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.edge.sessions")

TOUCH_EVERY = SESSION_TTL / 4
"""A record in use is written again this often, so it outlives the bucket's max age."""
WRITE_TIMEOUT = 5.0

Removed = Callable[[str], Awaitable[None]]


def valid_id(session_id: str) -> bool:
    """Session ids the SDK mints are 32 hex digits; anything else is never looked up (nor a KV key)."""
    return 0 < len(session_id) <= 64 and all(c in "0123456789abcdef" for c in session_id)


class SessionDirectory:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.records: dict[str, SessionRecord] = {}
        self._removed: list[Removed] = []
        self._touched: dict[str, float] = {}
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[dict[str, SessionRecord]], bool]) -> None:
        """Until the records satisfy `predicate`; woken by each change the watch brings."""
        while not predicate(self.records):
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def on_removed(self, callback: Removed) -> None:
        """`callback(session_id)` when a session ends anywhere (DELETE on any edge, expiry)."""
        self._removed.append(callback)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await buckets.follow(self.kv.watchall, self._apply, "sessions")

    async def _apply(self, entry: object) -> None:
        try:
            await self._apply_one(entry)
        finally:
            self._wake()

    async def _apply_one(self, entry: object) -> None:
        key: str = getattr(entry, "key", "")
        value: bytes | None = getattr(entry, "value", None)
        if getattr(entry, "operation", None) in ("DEL", "PURGE") or not value:
            if self.records.pop(key, None) is not None:
                self._touched.pop(key, None)
                for callback in self._removed:
                    await callback(key)
            return
        try:
            self.records[key] = frontsession.decode(value)
        except Exception:
            log.warning("unreadable session record ignored", session=key[:64])

    async def fetch(self, session_id: str) -> SessionRecord | None:
        """The session's record; read from KV when the watch has not brought it yet (a session
        opened a moment ago on another edge)."""
        if not valid_id(session_id):
            return None
        record = self.records.get(session_id)
        if record is not None:
            return record
        try:
            with anyio.fail_after(WRITE_TIMEOUT):
                entry = await self.kv.get(session_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = frontsession.decode(entry.value)
        self.records[session_id] = record
        return record

    async def save(self, record: SessionRecord) -> None:
        record = record.stamped()
        self.records[record.id] = record
        self._touched[record.id] = time.monotonic()
        with anyio.fail_after(WRITE_TIMEOUT):
            await self.kv.put(record.id, frontsession.encode(record))

    async def change(self, session_id: str, edit: Callable[[SessionRecord], SessionRecord]) -> None:
        """Read, edit and write back the record, compare-and-set: two edges serving one session
        at once (a round-robin balancer) never lose each other's change."""
        for _ in range(5):
            with anyio.fail_after(WRITE_TIMEOUT):
                try:
                    entry = await self.kv.get(session_id)
                except KeyNotFoundError:
                    return
                if not entry.value:
                    return
                record = edit(frontsession.decode(entry.value)).stamped()
                try:
                    await self.kv.update(session_id, frontsession.encode(record), last=entry.revision)
                except KeyWrongLastSequenceError:
                    continue
            self.records[session_id] = record
            self._touched[session_id] = time.monotonic()
            return
        raise RuntimeError(f"session {session_id[:64]} changed concurrently too often")

    async def touch(self, session_id: str) -> None:
        """Keep a used session's record alive (written again at most every TOUCH_EVERY seconds)."""
        now = time.monotonic()
        if now - self._touched.get(session_id, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        self._touched[session_id] = now
        record = self.records.get(session_id)
        if record is not None and time.time() - record.written >= TOUCH_EVERY:
            await self.save(record)

    async def remove(self, session_id: str) -> None:
        """End the session: here at once (its callbacks run now; the watch then finds it gone), and on the
        other edges when the deletion reaches their watch."""
        found = self.records.pop(session_id, None)
        self._touched.pop(session_id, None)
        try:
            with anyio.fail_after(WRITE_TIMEOUT):
                await self.kv.delete(session_id)
        finally:
            if found is not None:
                for callback in self._removed:
                    await callback(session_id)
