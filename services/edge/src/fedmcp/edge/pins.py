"""Front sessions pinned to the adapter instance that holds their own backing session.

A server configured `affinity = "session"` (announced in its `ServerSettings`) gets one
backing session per handshake-era front session. The protocol (docs/bus-protocol.md,
"Session affinity"):

1. The first request of front session S to server X: the edge creates S's pin for X in the
   region's pins bucket as `pending` (KV create, so two edges opening S at once agree on one
   opener; the others wait), then sends the request to X's queue group with `Fedmcp-Session: S`.
   The adapter that takes it opens a backing session for S and names itself in its accept; the
   edge writes the pin `pinned` to that instance (compare-and-set on the revision).
2. Later requests of S to X, from any edge of the region, go to `rpc.X.<instance>` only.
3. The instance is lost (no responders there, no accept, lost mid-call) or answers `gone` (its
   backing session for S died or was closed): the pin becomes `expired`, the front session is
   expired (`FederatedServer.expire_session`: its id answers 404) and the call fails with
   SESSION_EXPIRED. Never a silent switch to a fresh backing session.
4. The front session ends (`FederatedServer.session_closed`): each pin's instance gets
   `ctl.close.X.<instance>` and the pins are deleted.

2026-07-28 requests have no session: they are routed as for any server. A handshake-era
Streamable HTTP session is named by its `Mcp-Session-Id`; a stdio or HTTP+SSE front, which
has none, by an id per connection of this edge process (one per process for stdio).
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from fedmcp.edge.clients import connection_of
from fedmcp.edge.upstream import SessionLost, Upstream
from fedmcp.shared import buckets, envelopes, headers, jsonrpc
from fedmcp.shared.envelopes import CatalogEntry, Pin
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.edge.pins")

EXPIRED = "the upstream instance holding this session was lost; re-initialize"
KV_TIMEOUT = 5.0
CLOSE_TIMEOUT = 1.0
CACHE_MAX = 10_000
"""Pins kept in memory (an evicted one is read from the bucket again)."""
EXPIRE_GRACE = 1.0
"""Seconds between answering the call that found its session lost and ending the front session, so the
answer still reaches the client on the session's stream."""

Call = Callable[..., Awaitable[Any]]
"""`Upstream.request` with everything but the params, `session`, `instance` and `on_accept` bound."""
Expire = Callable[[str], Awaitable[None]]


class _PinNotRecorded(Exception):
    """The accepting instance could not be written into the pin: the call is cancelled."""


def expired_error(server: str, reason: str) -> MCPError:
    return MCPError(
        code=jsonrpc.SESSION_EXPIRED,
        message=f"{EXPIRED} (server {server!r}: {reason})",
        data={"server": server},
    )


class Pins:
    def __init__(self, upstream: Upstream, kv: KeyValue | None = None) -> None:
        self.upstream = upstream
        self.kv = kv
        """The region's pins bucket; None keeps pins in this edge's memory only (no replicas to share with)."""
        self._cache: dict[str, tuple[Pin, int]] = {}
        """Pins by key, with their KV revision."""
        self._opening: dict[str, anyio.Event] = {}
        self._local: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
        self._local_ids: dict[str, weakref.ref[Connection]] = {}
        self._serial = itertools.count(1)
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Ends front sessions shortly after their lost call was answered (see `EXPIRE_GRACE`)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    async def _expire_later(self, expire: Expire, session: str) -> None:
        await anyio.sleep(EXPIRE_GRACE)
        try:
            with anyio.fail_after(KV_TIMEOUT * 2):
                await expire(session)
        except Exception:
            log.exception("front session not expired")

    async def _end_session(self, expire: Expire, session: str) -> None:
        if self._tg is None:
            await expire(session)
        else:
            self._tg.start_soon(self._expire_later, expire, session)

    # -- which front session ---------------------------------------------------
    def front_session(self, ctx: ServerRequestContext[Any, Any], entry: CatalogEntry | None) -> str | None:
        """The front session a request to the server of `entry` is pinned by; None: route it normally
        (the server has no session affinity, or the client speaks 2026-07-28, which has no sessions)."""
        if entry is None or entry.settings.affinity != "session":
            return None
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        connection = connection_of(ctx.session)
        if connection.session_id:
            return connection.session_id
        local = self._local.get(connection)
        if local is None:
            # stdio (one connection per edge process) or HTTP+SSE: one session per connection
            local = f"{self.upstream.edge_id}-c{next(self._serial)}"
            self._local[connection] = local
            self._local_ids[local] = weakref.ref(connection)
        return local

    @property
    def local_sessions(self) -> list[str]:
        """The connection-scoped sessions of this edge (stdio, HTTP+SSE) still open."""
        return [sid for sid, ref in self._local_ids.items() if ref() is not None]

    # -- requests ----------------------------------------------------------------
    async def request(
        self, session: str, server: str, principal: str, call: Call, params: dict[str, Any], *, expire: Expire
    ) -> Any:
        """Send one request of front session `session` to `server` on the session's own backing session."""
        await self._sweep()
        key = buckets.pin_key(session, server)
        give_up = anyio.current_time() + self.upstream.request_timeout
        delay = 0.01
        while True:
            found = await self._lookup(key)
            if found is None:
                revision = await self._claim(key, Pin(session=session, server=server, principal=principal))
                if revision is not None:
                    return await self._open(key, revision, session, server, principal, call, params, expire)
                continue  # another edge is opening it
            pin, revision = found
            if pin.principal and pin.principal != principal:
                raise MCPError(code=jsonrpc.INVALID_REQUEST, message="this session belongs to another caller")
            if pin.state == "expired":
                await self._end_session(expire, session)
                raise expired_error(server, "this session expired")
            if pin.state == "pinned":
                await self._touch(key, pin, revision)
                try:
                    return await call(params, session=session, instance=pin.instance)
                except SessionLost as exc:
                    await self._expire(key, pin, session, exc.reason, expire)
                    raise expired_error(server, exc.reason) from None
            # pending: an edge is opening it
            if time.time() - pin.written > self.upstream.request_timeout + 5:
                # Its opener died before it learnt the instance: nothing was pinned; open it anew.
                taken = await self._update(key, Pin(session=session, server=server, principal=principal), revision)
                if taken is not None:
                    return await self._open(key, taken, session, server, principal, call, params, expire)
                continue
            if anyio.current_time() > give_up:
                raise MCPError(
                    code=jsonrpc.UPSTREAM_UNAVAILABLE,
                    message=f"server {server!r}: this session's backing session is still being opened",
                )
            opening = self._opening.get(key)
            if opening is not None:  # this edge opens it
                with anyio.move_on_after(1.0):
                    await opening.wait()
            else:  # another edge does: read the pin again shortly
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _open(
        self,
        key: str,
        revision: int,
        session: str,
        server: str,
        principal: str,
        call: Call,
        params: dict[str, Any],
        expire: Expire,
    ) -> Any:
        """The first request of the session to `server`: whichever replica takes it opens the backing
        session, and the pin names it."""
        opened = self._opening[key] = anyio.Event()
        pinned: Pin | None = None

        async def on_accept(instance: str) -> None:
            nonlocal pinned
            value = Pin(session=session, server=server, principal=principal, state="pinned", instance=instance)
            if await self._update(key, value, revision) is None:
                raise _PinNotRecorded(instance)
            pinned = value
            opened.set()

        try:
            return await call(params, session=session, on_accept=on_accept)
        except SessionLost as exc:  # accepted, then the instance died mid-call
            lost = pinned or Pin(session=session, server=server, principal=principal)
            await self._expire(key, lost, session, exc.reason, expire)
            raise expired_error(server, exc.reason) from None
        except _PinNotRecorded as exc:
            with anyio.CancelScope(shield=True):
                await self._close_at(server, str(exc), session)
            raise MCPError(
                code=jsonrpc.UPSTREAM_UNAVAILABLE, message=f"server {server!r}: this session's pin could not be stored"
            ) from None
        except BaseException as exc:
            unavailable = isinstance(exc, MCPError) and exc.error.code == jsonrpc.UPSTREAM_UNAVAILABLE
            if pinned is None or unavailable:
                # Nothing was accepted, or the adapter kept no backing session: no pin.
                with anyio.CancelScope(shield=True):
                    await self._delete(key)
            raise
        finally:
            opened.set()
            if self._opening.get(key) is opened:
                del self._opening[key]

    async def _expire(self, key: str, pin: Pin, session: str, reason: str, expire: Expire) -> None:
        log.warning("front session expired: its pinned instance is lost", server=pin.server, reason=reason)
        with anyio.CancelScope(shield=True):
            await self._put(key, Pin(session=session, server=pin.server, principal=pin.principal, state="expired"))
            await self._end_session(expire, session)

    # -- the end of a front session -------------------------------------------------
    async def release(self, session: str, servers: set[str]) -> None:
        """Close the front session's backing sessions on `servers` (and any this edge knows of) and
        delete its pins."""
        servers = servers | {pin.server for pin, _ in self._cache.values() if pin.session == session}
        for server in sorted(servers):
            key = buckets.pin_key(session, server)
            try:
                found = await self._lookup(key)
            except MCPError:
                found = None
            if found is not None and found[0].state == "pinned":
                await self._close_at(server, found[0].instance, session)
            if found is not None:
                await self._delete(key)
        self._local_ids.pop(session, None)

    async def _close_at(self, server: str, instance: str, session: str) -> None:
        subject = self.upstream.subjects.session_close(server, instance)
        try:
            await self.upstream.nc.request(subject, session.encode(), timeout=CLOSE_TIMEOUT, headers=headers.base())
        except Exception as exc:  # the instance is gone: so is the backing session
            log.info("pinned session not closed", server=server, instance=instance, error=repr(exc))

    async def _sweep(self) -> None:
        """Connection-scoped sessions whose connection is gone have ended."""
        ended = [sid for sid, ref in self._local_ids.items() if ref() is None]
        for session in ended:
            await self.release(session, set())

    # -- the bucket ------------------------------------------------------------------
    def _remember(self, key: str, pin: Pin, revision: int) -> None:
        self._cache.pop(key, None)
        self._cache[key] = (pin, revision)
        while len(self._cache) > CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))

    def _unavailable(self, exc: BaseException) -> MCPError:
        log.warning("pins bucket unavailable", error=repr(exc))
        return MCPError(code=jsonrpc.UPSTREAM_UNAVAILABLE, message="session pins are unavailable; try again shortly")

    async def _lookup(self, key: str) -> tuple[Pin, int] | None:
        cached = self._cache.get(key)
        if cached is not None and cached[0].state != "pending":
            return cached
        if self.kv is None:
            return cached
        try:
            with anyio.fail_after(KV_TIMEOUT):
                entry = await self.kv.get(key)
        except KeyNotFoundError:
            self._cache.pop(key, None)
            return None
        except Exception as exc:
            raise self._unavailable(exc) from exc
        pin = envelopes.decode(entry.value or b"{}", Pin)
        self._remember(key, pin, entry.revision or 0)
        return pin, entry.revision or 0

    async def _claim(self, key: str, pin: Pin) -> int | None:
        """Create the key as `pin` (pending); None when it exists already."""
        pin.edge, pin.written = self.upstream.edge_id, time.time()
        if self.kv is None:
            if key in self._cache:
                return None
            self._remember(key, pin, 1)
            return 1
        try:
            with anyio.fail_after(KV_TIMEOUT):
                revision = await self.kv.create(key, envelopes.encode(pin))
        except KeyWrongLastSequenceError:
            return None
        except Exception as exc:
            raise self._unavailable(exc) from exc
        self._remember(key, pin, revision)
        return revision

    async def _update(self, key: str, pin: Pin, revision: int) -> int | None:
        """Write `pin` if the key is still at `revision`; its new revision, or None."""
        pin.edge, pin.written = self.upstream.edge_id, time.time()
        if self.kv is None:
            cached = self._cache.get(key)
            if cached is None or cached[1] != revision:
                return None
            self._remember(key, pin, revision + 1)
            return revision + 1
        try:
            with anyio.fail_after(KV_TIMEOUT):
                new = await self.kv.update(key, envelopes.encode(pin), last=revision)
        except KeyWrongLastSequenceError:
            self._cache.pop(key, None)
            return None
        except Exception as exc:
            log.warning("pin not written", error=repr(exc))
            return None
        self._remember(key, pin, new)
        return new

    async def _touch(self, key: str, pin: Pin, revision: int) -> None:
        """A pin in use is written again before the bucket's max age ends it."""
        if time.time() - pin.written > buckets.PIN_TOUCH_EVERY:
            await self._update(key, msgspec.structs.replace(pin), revision)

    async def _put(self, key: str, pin: Pin) -> None:
        pin.edge, pin.written = self.upstream.edge_id, time.time()
        if self.kv is None:
            self._remember(key, pin, (self._cache.get(key, (pin, 0))[1]) + 1)
            return
        try:
            with anyio.fail_after(KV_TIMEOUT):
                revision = await self.kv.put(key, envelopes.encode(pin))
        except Exception as exc:
            log.warning("pin not written", error=repr(exc))
            self._cache.pop(key, None)
            return
        self._remember(key, pin, revision)

    async def _delete(self, key: str) -> None:
        self._cache.pop(key, None)
        if self.kv is None:
            return
        try:
            with anyio.fail_after(KV_TIMEOUT):
                await self.kv.delete(key)
        except Exception as exc:
            log.warning("pin not deleted", error=repr(exc))
