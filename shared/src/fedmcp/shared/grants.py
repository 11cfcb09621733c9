"""Consent grants that every edge of every region honours, and that survive a partition.

A grant says "principal P consented to calls of tool T of server S" (scope `tool`) or
"... of every tool of S" (scope `server`, tool `*`), until `expires_at`. Unlike the
registry, grants are hard state: nothing re-derives them, so they are replicated.

Replication
-----------
- **Own bucket.** Each region writes only its own bucket `<p>_grants_<region>` (placed on
  its JetStream cluster, like `buckets.open_bucket`). Key: `<principal>.<server>.<tool>`,
  each token kept if it matches `[A-Za-z0-9_-]{1,64}`, else `=` + base32 (or `=x` + a
  SHA-256 prefix when long); a server-wide grant's tool token is `=all`.
- **View.** Each region also has a stream `<p>_grantview_<region>` (a KV bucket that no one
  writes) which *sources* every known region's grants bucket, its own included, with the
  subject transform `$KV.<p>_grants_<X>.<key>` -> `$KV.<p>_grantview_<R>.<X>.<key>`. So it
  holds one entry per (origin region, grant key), in the region's own cluster: readable
  (batched direct get) and watchable there while other regions are cut off. The regions
  come from configuration (`--regions` / `FEDMCP_REGIONS`; default: the own region).
- **Merge.** A store keeps the latest value per (origin, key) slot, and per key the latest
  over all origins, ordered by the value's stamp (`granted_at`, or `revoked_at` for a
  revocation), then revocation over grant, then origin, then id. A revocation is a
  tombstone value, never a KV delete. Every path below only ever raises a slot's value, so
  the result does not depend on the order in which the paths or the sources deliver.
- **Stamps are hybrid clocks.** A write's stamp is max(wall clock, the highest stamp the
  writer has seen for that key (or scope) + 1 µs), and a region's writes are
  compare-and-set on the key's revision, so a write always supersedes what its writer
  saw, and within a region the stream order equals the stamp order. Writes made
  concurrently in two regions (a partition) are ordered by wall clock (last writer wins).
- **Scope.** A revocation cuts every grant covering its target that is stamped before it:
  a server-wide revocation also ends tool grants of that server (those granted during a
  partition and not yet seen too), and a tool revocation ends a server-wide grant for that
  tool (not for the server's other tools).

Paths into memory (every edge answers `has()` from memory; no I/O on the hot path):

1. The view, read by batched direct get at start (works during a partition: no JetStream
   meta leader needed) and then watched (sub-millisecond while the sources run).
2. A core NATS event `<p>.evt.consent.<region>` published after each write. Only its
   revocations are applied (failing closed): a revocation reaches every connected edge in
   milliseconds even while a source consumer is still in its retry backoff after a heal.
3. A catch-up read of every region's grants bucket by batched direct get from the last
   sequence seen (`resync_interval`, 2 s): nats-server retries a source cut by a partition
   with a backoff of up to 2 minutes; this bounds convergence after a heal by the interval.

Limits: stamps trust wall clocks across regions (skew reorders concurrent writes by that
much); grants and tombstones stay in the buckets (no expiry purge); a store that starts
during a partition serves the view's content and keeps retrying its watch.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

import anyio
import msgspec
import structlog
from fedmcp.shared import buckets, headers
from fedmcp.shared.buckets import LOCAL, NotCreatedYet, Region, _stream_config, patiently
from fedmcp.shared.policy import DEFAULT_CONSENT_TTL
from fedmcp.shared.subjects import Subjects, check_token
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import StreamSource, SubjectTransform
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.grants")

Scope = Literal["tool", "server"]
Target = tuple[str, str, str | None]
"""(principal, server, tool); tool None: server-wide."""
SERVER_WIDE = "*"
_EPSILON = 1e-6


def grant_key(principal: str, server: str, tool: str | None) -> str:
    token = buckets.key_token
    return f"{token(principal)}.{token(server)}.{'=all' if tool is None else token(tool)}"


def parse_regions(value: str | Iterable[str] | None, own: str) -> list[str]:
    """`east,west` (or a list) -> checked region names, the own region included."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    regions = [check_token(r.strip(), "region") for r in items if r.strip()]
    return list(dict.fromkeys([*regions, own]))


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    principal: str
    server: str
    tool: str
    """The tool's name on its backing server; `*` for a server-wide grant."""
    scope: Scope
    granted_at: float
    expires_at: float
    revoked: bool = False
    revoked_at: float = 0.0
    origin: str = ""
    """Region whose bucket holds it."""
    edge: str = ""
    id: str = ""

    @property
    def target(self) -> Target:
        return (self.principal, self.server, None if self.scope == "server" else self.tool)

    @property
    def stamp(self) -> float:
        return self.revoked_at if self.revoked else self.granted_at

    def live(self, now: float) -> bool:
        """Not revoked and not expired (a covering revocation is GrantStore.active's business)."""
        return not self.revoked and self.expires_at > now


def _order(g: Grant) -> tuple[float, bool, str, str]:
    return (g.stamp, g.revoked, g.origin, g.id)


_decode_one = msgspec.json.Decoder(Grant).decode
_decode_many = msgspec.json.Decoder(list[Grant]).decode
_encode = msgspec.json.Encoder().encode

Listener = Callable[[Grant], Awaitable[None]]
"""Called with a key's new merged value (a grant or a revocation) whenever it changes."""


class GrantStore:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        region: Region,
        regions: Sequence[str],
        own: KeyValue,
        view: KeyValue,
        *,
        edge: str = "",
        resync_interval: float | None = 2.0,
    ) -> None:
        self._js, self._nc = js, js._nc
        self._subjects, self.region, self.regions = subjects, region, list(regions)
        self._own, self._view = own, view
        self.edge = edge
        self._resync_interval = resync_interval
        self._slots: dict[tuple[str, Target], Grant] = {}
        self._merged: dict[Target, Grant] = {}
        self._next_seq: dict[str, int] = dict.fromkeys(self.regions, 1)
        self._listeners: list[Listener] = []
        self._changed = anyio.Event()

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        subjects: Subjects,
        region: Region = LOCAL,
        regions: Iterable[str] | str | None = None,
        *,
        create: bool = True,
        patience: float = 30.0,
        edge: str = "",
        resync_interval: float | None = 2.0,
    ) -> GrantStore:
        """Bind to (or, with `create`, create) the region's grants bucket and view. Call `run`
        (an edge) or `load` (a one-shot reader) to fill the memory."""
        names = parse_regions(regions, region.name)
        own = await buckets.open_bucket(js, subjects, buckets.GRANTS, region, create=create, patience=patience)
        view = await _open_view(js, subjects, region, names, create=create, patience=patience)
        return cls(js, subjects, region, names, own, view, edge=edge, resync_interval=resync_interval)

    # -- reading (memory only) ----------------------------------------------------
    def has(self, principal: str, server: str, tool: str | None, now: float | None = None) -> bool:
        """Does a live grant cover this call? `tool` None asks for a server-wide grant."""
        now = time.time() if now is None else now
        exact = self._merged.get((principal, server, tool))
        wide = self._merged.get((principal, server, None))
        cut = max((g.revoked_at for g in (exact, wide) if g is not None and g.revoked), default=0.0)
        return any(g is not None and g.live(now) and g.granted_at > cut for g in (exact, wide))

    def active(self, grant: Grant, now: float | None = None) -> bool:
        """`grant` is live and no server-wide revocation after it covers it."""
        now = time.time() if now is None else now
        if not grant.live(now):
            return False
        wide = self._merged.get((grant.principal, grant.server, None))
        return not (wide is not None and wide.revoked and wide.revoked_at > grant.granted_at)

    def list(self, principal: str | None = None, *, active_only: bool = False, now: float | None = None) -> list[Grant]:
        """Every key's merged value (revocations included unless `active_only`), sorted."""
        found = [g for g in self._merged.values() if principal is None or g.principal == principal]
        if active_only:
            found = [g for g in found if self.active(g, now)]
        return sorted(found, key=lambda g: (g.principal, g.server, g.scope != "server", g.tool))

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def wait_until(self, predicate: Callable[[GrantStore], bool]) -> None:
        """Until `predicate(self)` holds; woken by every change of the merged state."""
        while not predicate(self):
            await self._changed.wait()

    # -- writing (own region) ----------------------------------------------------
    async def grant(
        self,
        principal: str,
        server: str,
        tool: str | None = None,
        *,
        ttl: float = DEFAULT_CONSENT_TTL,
        edge: str | None = None,
        now: float | None = None,
    ) -> Grant:
        """Record consent (tool None: every tool of the server) in the own region for `ttl` seconds."""
        if not principal or not server or tool == "":
            raise ValueError("principal, server and tool must not be empty")
        now = time.time() if now is None else now
        grant = Grant(
            principal=principal,
            server=server,
            tool=SERVER_WIDE if tool is None else tool,
            scope="server" if tool is None else "tool",
            granted_at=now,
            expires_at=now + ttl,
            origin=self.region.name,
            edge=self.edge if edge is None else edge,
            id=uuid.uuid4().hex,
        )
        [written] = await self._write([grant])
        return written

    async def revoke(
        self, principal: str, server: str, tool: str | None = None, *, edge: str | None = None, now: float | None = None
    ) -> int:
        """Write revocations in the own region: for `tool`, or (None) for the server and every
        tool grant of it this store knows. Returns how many live grants stopped covering the target."""
        now = time.time() if now is None else now
        wide: Target = (principal, server, None)
        if tool is None:
            targets = {t for t, g in self._merged.items() if t[:2] == (principal, server) and not g.revoked}
            targets.add(wide)
            covering = targets
        else:
            targets = {(principal, server, tool)}
            covering = {*targets, wide}
        ended = sum(1 for t in covering if (g := self._merged.get(t)) is not None and self.active(g, now))
        tombstones = []
        for target in sorted(targets, key=lambda t: (t[2] is not None, t[2] or "")):
            old = self._merged.get(target)
            tombstones.append(
                Grant(
                    principal=principal,
                    server=server,
                    tool=SERVER_WIDE if target[2] is None else target[2],
                    scope="server" if target[2] is None else "tool",
                    granted_at=old.granted_at if old else 0.0,
                    expires_at=old.expires_at if old else 0.0,
                    revoked=True,
                    revoked_at=now,
                    origin=self.region.name,
                    edge=self.edge if edge is None else edge,
                    id=old.id if old else uuid.uuid4().hex,
                )
            )
        await self._write(tombstones)
        return ended

    async def _write(self, grants: builtins.list[Grant]) -> builtins.list[Grant]:
        written = [await self._write_one(g) for g in grants]
        try:
            await self._nc.publish(
                self._subjects.consent_changed(self.region.name), _encode(written), headers=headers.base()
            )
        except Exception as exc:  # the bucket has it; the view and catch-up carry it anyway
            log.warning("consent event not published", error=repr(exc))
        return written

    async def _write_one(self, grant: Grant) -> Grant:
        key = grant_key(*grant.target)
        for _ in range(10):
            current: Grant | None = None
            try:
                entry = await self._own.get(key)
                revision = entry.revision or 0
                current = _decode_one(entry.value) if entry.value else None
            except KeyNotFoundError:
                revision = 0
            except msgspec.DecodeError:  # unreadable: overwrite it (compare-and-set still holds)
                pass
            floor = max(self._floor(grant.target), current.stamp if current is not None else 0.0) + _EPSILON
            if grant.stamp < floor:
                grant = _restamp(grant, floor)
            data = _encode(grant)
            try:
                if revision:
                    await self._own.update(key, data, last=revision)
                else:
                    await self._own.create(key, data)
            except KeyWrongLastSequenceError:
                continue  # another edge of the region wrote it meanwhile: stamp above that
            if self._apply(self.region.name, grant):
                await self._notify(self._merged[grant.target])
            return grant
        raise RuntimeError(f"could not write grant {key}: it keeps changing")

    def _floor(self, target: Target) -> float:
        """The highest stamp a write to `target` must exceed to supersede what this store saw."""
        principal, server, tool = target
        if tool is None:
            seen = [g for t, g in self._merged.items() if t[:2] == (principal, server)]
        else:
            seen = [g for g in (self._merged.get(target), self._merged.get((principal, server, None))) if g]
        return max((g.stamp for g in seen), default=0.0)

    # -- merging ----------------------------------------------------------------
    def _apply(self, origin: str, grant: Grant) -> bool:
        """Raise the (origin, key) slot to `grant` if it is newer; True if the key's merged value changed."""
        slot = (origin, grant.target)
        old = self._slots.get(slot)
        if old is not None and _order(old) >= _order(grant):
            return False
        self._slots[slot] = grant
        merged = self._merged.get(grant.target)
        if merged is not None and _order(merged) >= _order(grant):
            return False
        self._merged[grant.target] = grant
        return True

    def _apply_stored(self, origin: str, key: str, data: bytes) -> Grant | None:
        """A value read from a bucket or the view; None if unchanged or unreadable."""
        try:
            grant = _decode_one(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("unreadable grant ignored", origin=origin, key=key)
            return None
        if grant_key(*grant.target) != key:
            log.warning("grant stored under another key ignored", origin=origin, key=key)
            return None
        return grant if self._apply(origin, grant) else None

    async def _notify(self, grant: Grant) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        for listener in self._listeners:
            try:
                await listener(grant)
            except Exception:
                log.exception("grant listener failed")

    # -- running -----------------------------------------------------------------
    async def load(self, *, patience: float = 30.0) -> int:
        """Read the whole view once (batched direct get: works during a partition); returns its size."""
        found = await buckets.read_all(self._js, self._view, patience=patience)
        for key, data in found.items():
            origin, _, rest = key.partition(".")
            if (grant := self._apply_stored(origin, rest, data)) is not None:
                await self._notify(self._merged[grant.target])
        return len(found)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the memory current; started once the view has been read."""
        sub = await self._nc.subscribe(self._subjects.consent_changed_all(), cb=self._on_event)
        try:
            await self.load()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_view)
                if self._resync_interval:
                    tg.start_soon(self._resync_loop, self._resync_interval)
                task_status.started()
        finally:
            with anyio.move_on_after(2, shield=True):
                await sub.unsubscribe()

    async def _watch_view(self) -> None:
        async def handle(entry: Any) -> None:
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                return
            origin, _, rest = entry.key.partition(".")
            if (grant := self._apply_stored(origin, rest, entry.value)) is not None:
                await self._notify(self._merged[grant.target])

        await buckets.follow(self._view.watchall, handle, "grant view")

    async def _on_event(self, msg: Msg) -> None:
        if not headers.speaks_our_protocol(msg.headers):
            return
        origin = msg.subject.rsplit(".", 1)[-1]
        try:
            grants = _decode_many(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("unreadable consent event ignored", subject=msg.subject)
            return
        for grant in grants:  # revocations only: an event can end access, never open it
            if grant.revoked and grant.origin == origin and self._apply(origin, grant):
                await self._notify(self._merged[grant.target])

    async def _resync_loop(self, interval: float) -> None:
        while True:
            for region in self.regions:
                try:
                    await self.catch_up(region)
                except Exception as exc:  # cut off (partition) or not created yet: next round
                    log.debug("grant catch-up skipped", region=region, error=repr(exc))
            await anyio.sleep(interval)

    async def catch_up(self, region: str, *, timeout: float = 1.0) -> int:
        """Read `region`'s grants bucket directly from the last sequence seen; returns values read."""
        bucket = self._subjects.bucket(buckets.GRANTS, region)
        subject = f"{self._js._prefix}.DIRECT.GET.KV_{bucket}"
        prefix = f"$KV.{bucket}."
        read = 0
        while True:
            request = {"seq": self._next_seq[region], "next_by_subj": f"{prefix}>", "batch": 1000}
            messages, pending = await _direct_batch(self._nc, subject, request, timeout)
            for hdrs, data in messages:
                self._next_seq[region] = int(hdrs["Nats-Sequence"]) + 1
                read += 1
                if hdrs.get("KV-Operation") in ("DEL", "PURGE") or not data:
                    continue
                grant = self._apply_stored(region, hdrs["Nats-Subject"][len(prefix) :], data)
                if grant is not None:
                    await self._notify(self._merged[grant.target])
            if not messages or not pending:
                return read


def _restamp(grant: Grant, stamp: float) -> Grant:
    if grant.revoked:
        return msgspec.structs.replace(grant, revoked_at=stamp)
    return msgspec.structs.replace(grant, granted_at=stamp)


async def _direct_batch(
    nc: NATS, subject: str, request: dict[str, object], timeout: float
) -> tuple[list[tuple[dict[str, str], bytes]], int]:
    """One batched direct get (ADR-31): the messages and how many more match after them."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    messages: list[tuple[dict[str, str], bytes]] = []
    try:
        await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
        with anyio.fail_after(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                hdrs = dict(msg.headers or {})
                status = hdrs.get("Status")
                if status == "404":  # nothing at or after the sequence
                    return messages, 0
                if status == "204":  # end of the batch
                    return messages, int(hdrs.get("Nats-Num-Pending", "0"))
                if status == "503":
                    raise NoRespondersError
                if status is not None:
                    raise RuntimeError(f"direct get {subject}: {status} {hdrs.get('Description', '')}")
                messages.append((hdrs, msg.data))
    finally:
        await sub.unsubscribe()


class _Raced(NotCreatedYet):
    """Another service created the view with other sources meanwhile: look again."""


def _source(subjects: Subjects, view: str, region: str) -> StreamSource:
    bucket = subjects.bucket(buckets.GRANTS, region)
    transform = SubjectTransform(src=f"$KV.{bucket}.>", dest=f"$KV.{view}.{region}.>")
    return StreamSource(name=f"KV_{bucket}", subject_transforms=[transform])


async def _open_view(
    js: JetStreamContext, subjects: Subjects, region: Region, regions: Sequence[str], *, create: bool, patience: float
) -> KeyValue:
    """Bind to the region's grant view; with `create`, create it or add the sources it lacks
    (never remove one: another edge may know more regions)."""
    name = subjects.bucket(buckets.GRANTVIEW, region.name)
    stream = f"KV_{name}"
    wanted = [_source(subjects, name, r) for r in regions]

    async def attempt() -> KeyValue:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            if not create:
                raise NotCreatedYet(name) from None
            config = replace(_stream_config(name, 1, region), subjects=None, sources=wanted)
            try:
                await js.add_stream(config)
            except BadRequestError:
                raise _Raced(name) from None
            return await js.key_value(name)
        have = {s.name for s in info.config.sources or []}
        missing = [s for s in wanted if s.name not in have]
        if missing and create:
            await js.update_stream(replace(info.config, sources=[*(info.config.sources or []), *missing]))
        elif missing:
            log.warning("grant view lacks regions", view=name, missing=[s.name for s in missing])
        return await js.key_value(name)

    return await patiently(attempt, patience)
