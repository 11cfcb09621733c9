"""JetStream KV buckets of the federation, created idempotently by any service.

Control-plane state is kept per region: each region's managers write their own
registry, catalogs and leases buckets, placed on that region's JetStream cluster.
The state in them is derived from what the region hears on the bus (announcements
and heartbeats cross NATS gateways and leaf links), so every region holds a full
view while the regions are connected, keeps serving from its own view during a
partition, and converges again by re-observation when the link heals; there are
no cross-region writes to reconcile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog
from fedmcp.shared.subjects import Subjects
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, Placement, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.buckets")

STREAM_NAME_IN_USE = 10058
NO_SUITABLE_PEERS = 10005
"""JetStream error code while a cluster that should hold a stream is still forming."""

REGISTRY = "registry"
"""key `<server>.<instance>` -> `Instance`; written by the region's leading manager only."""
LEASES = "leases"
"""key `manager` -> the lease of the manager that writes the region's registry and catalogs buckets."""
T = TypeVar("T")

CATALOGS = "catalogs"
"""key `<server>` -> `CatalogEntry`; written by the region's leading manager only, watched by edges."""
POLICY = "policy"
"""key `current` -> `policy.Policy` (history 10); written by operators (`fedmcp policy set`, compare-and-set),
watched by edges."""
GRANTS = "grants"
"""key `<principal>.<server>.<tool>` -> `grants.Grant`; written only by the region's own edges (and operators)."""
GRANTVIEW = "grantview"
"""No writer: a stream that sources every region's grants bucket, key `<origin region>.<grant key>` (grants.py)."""

PINS = "pins"
"""key `<front session>.<server>` (`pin_key`) -> `envelopes.Pin`: which adapter instance holds a front session's
backing session of a server with `affinity = "session"`; written by edges, created by the manager."""
PIN_MAX_AGE = 4 * 3600.0
"""Seconds a pin lives without being written: longer than an adapter keeps an idle pinned session
(`session_idle_timeout`, default 2 h), so a pin never vanishes while its backing session lives."""
PIN_TOUCH_EVERY = 1800.0
"""A pin in use is written again when its last write is older than this."""

SESSIONS = "sessions"
"""key `<front session id>` -> `frontsession.SessionRecord`; written by the edge that serves a request of
the session, watched by every edge of the region (any of them serves any request of the session)."""


def key_token(value: str) -> str:
    """`value` as one subject-safe KV key token, injective: safe tokens never contain `=`; others are
    `=`+base32 (or `=x`+a hash when long)."""
    if _SAFE_TOKEN.match(value):
        return value
    encoded = base64.b32encode(value.encode()).decode().rstrip("=")
    return "=" + encoded if len(encoded) <= 100 else "=x" + hashlib.sha256(value.encode()).hexdigest()[:40]


_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def pin_key(session: str, server: str) -> str:
    """The pins bucket's key of front session `session`'s pin for `server`."""
    return f"{key_token(session)}.{key_token(server)}"


@dataclass(frozen=True)
class Region:
    """Where a service runs, and where its region's buckets live.

    `cluster` is the JetStream cluster (the NATS cluster name) to place the buckets
    on; None lets JetStream choose, right for a single server or one cluster.
    """

    name: str = "local"
    cluster: str | None = None
    replicas: int = 1


LOCAL = Region()
"""The default: one region, buckets wherever JetStream puts them."""


def _stream_config(bucket: str, history: int, region: Region, max_age: float | None = None) -> StreamConfig:
    # What nats-py's create_key_value builds, plus the placement it ignores (nats-py 2.16).
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=history,
        max_age=max_age,
        num_replicas=region.replicas,
        placement=Placement(cluster=region.cluster) if region.cluster else None,
    )


class NotCreatedYet(Exception):
    """The bucket does not exist, and this service only binds to it (the manager creates it)."""


async def patiently(attempt: Callable[[], Awaitable[T]], patience: float) -> T:
    """A cluster that is still electing its JetStream or stream leader answers "no responders"
    for a few seconds: keep trying for `patience` seconds."""
    deadline = anyio.current_time() + patience
    while True:
        try:
            return await attempt()
        except (NoRespondersError, TimeoutError, ServiceUnavailableError, NotCreatedYet):
            if anyio.current_time() > deadline:
                raise
            await anyio.sleep(0.25)
        except BadRequestError as exc:
            # "No suitable peers for placement": the cluster's servers have not all joined JetStream yet.
            if exc.err_code != NO_SUITABLE_PEERS or anyio.current_time() > deadline:
                raise
            await anyio.sleep(0.25)


async def open_stream(
    js: JetStreamContext, config: StreamConfig, *, create: bool, patience: float = 30.0
) -> StreamInfo:
    """Bind to a stream; create it when missing and `create` (managers; replicas race safely: an
    identical config is accepted), else wait for it. An existing stream is bound as it is (an
    operator may have tuned its retention or replicas)."""
    name = config.name or ""

    async def attempt() -> StreamInfo:
        try:
            return await js.stream_info(name)
        except NotFoundError:
            if not create:
                raise NotCreatedYet(name) from None
            try:
                return await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:  # created meanwhile with another configuration
                    raise
            return await js.stream_info(name)

    return await patiently(attempt, patience)


async def open_bucket(
    js: JetStreamContext,
    subjects: Subjects,
    name: str,
    region: Region,
    *,
    history: int = 1,
    patience: float = 30.0,
    create: bool = True,
    max_age: float | None = None,
) -> KeyValue:
    """Bind to the region's bucket; create it if needed and `create` (managers), else wait for it
    (edges and operators, whose NATS users may not create streams). `max_age`: seconds after which
    an entry that was not written again expires."""
    bucket = subjects.bucket(name, region.name)

    async def attempt() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise NotCreatedYet(bucket) from None
            # Two services racing here both succeed: an identical config is accepted.
            await js.add_stream(_stream_config(bucket, history, region, max_age))
            return await js.key_value(bucket)

    return await patiently(attempt, patience)


async def read_all(
    js: JetStreamContext, kv: KeyValue, *, timeout: float = 5.0, patience: float = 30.0
) -> dict[str, bytes]:
    """Every live key of a bucket in one batched direct get (nats-server 2.11+).

    Any replica or mirror answers it and no consumer is created, so it works while
    JetStream has no meta leader, which is the case on both sides of a two-region
    partition (the meta group spans the supercluster)."""
    # nats-py keeps these private; the request is the documented JetStream API (ADR-31).
    nc: NATS = js._nc
    pre = f"$KV.{kv._name}."
    subject = f"{js._prefix}.DIRECT.GET.{kv._stream}"
    request = json.dumps({"multi_last": [f"{pre}>"], "batch": 100_000}).encode()

    async def attempt() -> dict[str, bytes]:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: dict[str, bytes] = {}
        try:
            await nc.publish(subject, request, reply=inbox)
            with anyio.fail_after(timeout):
                while True:
                    msg = await sub.next_msg(timeout=timeout)
                    hdrs = msg.headers or {}
                    status = hdrs.get("Status")
                    if status in ("204", "404"):  # end of the batch; an empty bucket
                        return found
                    if status == "503":  # the stream has no leader or replica yet
                        raise NoRespondersError
                    if status is not None:
                        raise RuntimeError(f"direct get on {kv._stream}: {status} {hdrs.get('Description', '')}")
                    key = hdrs["Nats-Subject"][len(pre) :]
                    if hdrs.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
                        found.pop(key, None)
                    else:
                        found[key] = msg.data
        finally:
            await sub.unsubscribe()

    return await patiently(attempt, patience)


async def follow(start: Callable[[], Awaitable[Any]], handle: Callable[[Any], Awaitable[None]], what: str) -> None:
    """Watch a bucket forever, handing every entry (never the end-of-initial-values marker) to `handle`.
    Starting a watch needs a JetStream meta leader, which a partition may lack: keep what was read and retry."""
    while True:
        try:
            watcher = await start()
        except Exception as exc:
            log.info(f"{what} watch not available yet", error=repr(exc))
            await anyio.sleep(1)
            continue
        try:
            async for entry in watcher:
                if entry is not None:
                    await handle(entry)
        except Exception as exc:
            log.warning(f"{what} watch ended", error=repr(exc))
            await anyio.sleep(1)
        finally:
            with anyio.move_on_after(2, shield=True):
                await watcher.stop()
