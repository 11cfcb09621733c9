"""Backing sessions of one front session each, for servers with `affinity = "session"`.

The first request of a front session comes on the server's queue-group subject with the
`Fedmcp-Session` header; the adapter that takes it opens a backing session for that front
session alone (stdio: a process of its own; HTTP: an MCP session of its own) and the edge
pins the front session to this instance. Later requests come on the instance's pinned
subject. A pinned session is never restarted: when it is lost, its state is lost, and the
adapter answers `gone`, so that the front session expires instead of silently meeting a
fresh backing session.

Bounded: at most `max_sessions` (beyond it the adapter answers busy and the edge tries
another replica); a session with no call for `idle_timeout` seconds is closed; the edge
closes one when its front session ends (`ctl.close.<server>.<instance>`); a drain closes all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup
from fedmcp.adapter.connection import BackingConnection
from fedmcp.shared import metrics
from fedmcp.shared.config import BackingServer

log = structlog.get_logger("fedmcp.adapter.pinned")


@dataclass(eq=False)
class Pinned:
    """One front session's backing session."""

    session: str
    connection: BackingConnection
    last_used: float
    calls: int = 0
    closing: bool = False
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set once the session is connected, or could not be (then `connection.client` is None)."""
    finished: anyio.Event = field(default_factory=anyio.Event)

    async def wait_ready(self, timeout: float) -> BackingConnection | None:
        """The connected session, or None when it could not be opened (or is gone) within `timeout`."""
        with anyio.move_on_after(max(0.0, timeout)):
            await self.ready.wait()
        connection = self.connection
        return connection if connection.client is not None and not self.closing else None

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """A call runs on the session: it is not idle until the call ends."""
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1
            self.last_used = anyio.current_time()


class PinnedSessions:
    def __init__(
        self,
        name: str,
        config: BackingServer,
        *,
        max_sessions: int | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.max_sessions = config.max_sessions if max_sessions is None else max_sessions
        self.idle_timeout = config.session_idle_timeout if idle_timeout is None else idle_timeout
        self._held: dict[str, Pinned] = {}
        self._tg: TaskGroup | None = None
        self._closing = anyio.Event()
        metrics.PINNED_SESSIONS.labels(name)  # the series exists (at 0) from the start

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, session: str) -> bool:
        return session in self._held

    def get(self, session: str) -> Pinned | None:
        return self._held.get(session)

    def open(self, session: str) -> Pinned | None:
        """The front session's backing session, opened now if this instance has none yet for it;
        None when this instance is full (or closing)."""
        held = self._held.get(session)
        if held is not None:
            return held
        if self._tg is None or self._closing.is_set() or len(self._held) >= self.max_sessions:
            return None
        pinned = Pinned(session, self._connection(self._modes()[0]), anyio.current_time())
        self._held[session] = pinned
        metrics.PINNED_SESSIONS.labels(self.name).inc()
        self._tg.start_soon(self._run, pinned)
        log.info("pinned session opened", server=self.name, sessions=len(self._held))
        return pinned

    def close(self, session: str) -> bool:
        """End a front session's backing session (gracefully: an HTTP session is deleted, a stdio child
        sees EOF). False if this instance does not hold it."""
        pinned = self._held.get(session)
        if pinned is None:
            return False
        self._forget(pinned)
        pinned.closing = True
        pinned.connection.close()
        return True

    def close_all(self) -> None:
        """Close every pinned session; `run` returns once they are closed."""
        self._closing.set()

    def _forget(self, pinned: Pinned) -> None:
        if self._held.get(pinned.session) is pinned:
            del self._held[pinned.session]
            metrics.PINNED_SESSIONS.labels(self.name).dec()
            log.info("pinned session closed", server=self.name, sessions=len(self._held))

    def _modes(self) -> list[str]:
        """Pinned sessions serve handshake-era clients only (2026-07-28 ones have no session): the
        server is met in their era when it speaks it (an HTTP server's MCP session exists only there),
        else in the one it speaks."""
        era = self.config.era
        return ["legacy", "auto"] if era == "auto" else [era]

    def _connection(self, mode: str) -> BackingConnection:
        return BackingConnection(self.name, self.config, mode, restart=False, dedicated=True)

    async def _run(self, pinned: Pinned) -> None:
        try:
            modes = self._modes()
            for index, mode in enumerate(modes):
                if index > 0:
                    pinned.connection = self._connection(mode)
                connection = pinned.connection
                async with anyio.create_task_group() as tg:

                    async def connected(connection: BackingConnection = connection) -> None:
                        await connection.wait_ready()
                        if connection.client is not None:
                            pinned.ready.set()

                    tg.start_soon(connected)
                    await connection.run()
                    tg.cancel_scope.cancel()
                if connection.state != "failed" or pinned.closing:
                    break  # it was connected (and is now lost or closed): never replaced
                log.info("pinned session could not be opened", server=self.name, mode=mode)
        finally:
            self._forget(pinned)
            pinned.ready.set()
            pinned.finished.set()

    async def _reap_idle(self) -> None:
        every = min(self.idle_timeout / 4, 5.0)
        while True:
            await anyio.sleep(every)
            cutoff = anyio.current_time() - self.idle_timeout
            for pinned in list(self._held.values()):
                if pinned.calls == 0 and pinned.last_used <= cutoff:
                    log.info("closing an idle pinned session", server=self.name, idle_seconds=self.idle_timeout)
                    self.close(pinned.session)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reap_idle)
            task_status.started()
            await self._closing.wait()
            held = list(self._held.values())
            for pinned in held:
                self.close(pinned.session)
            with anyio.move_on_after(6):
                for pinned in held:
                    await pinned.finished.wait()
            tg.cancel_scope.cancel()
