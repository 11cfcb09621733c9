"""Leadership among managers: a lease in JetStream KV, renewed by compare-and-set.

Any number of managers may run (in one region or several). Exactly one holds the
lease and writes the registry and catalogs buckets; the others follow the same
announcements in memory and take over when the lease has not been renewed for
`ttl` seconds. Compare-and-set on the key's revision makes every change of
holder a single winner. Expiry compares wall clocks, so hosts need NTP.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.manager.lease")

KEY = "manager"


class Lease(msgspec.Struct):
    holder: str
    expires: float


async def hold(
    kv: KeyValue,
    me: str,
    on_change: Callable[[bool], Awaitable[None]],
    *,
    ttl: float = 3.0,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Try to hold the lease forever; call `on_change(leading)` whenever that changes."""
    leading: bool | None = None
    started = False
    while True:
        now_leading = await _attempt(kv, me, ttl)
        if now_leading != leading:
            leading = now_leading
            log.info("manager leadership", leading=leading, instance=me)
            await on_change(leading)
        if not started:
            started = True
            task_status.started()
        await anyio.sleep(ttl / 3)


async def _attempt(kv: KeyValue, me: str, ttl: float) -> bool:
    value = msgspec.json.encode(Lease(holder=me, expires=time.time() + ttl))
    try:
        try:
            entry = await kv.get(KEY)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            await kv.create(KEY, value)
            return True
        current = msgspec.json.decode(entry.value, type=Lease)
        if current.holder != me and current.expires > time.time():
            return False
        await kv.update(KEY, value, last=entry.revision)
        return True
    except KeyWrongLastSequenceError:
        return False  # another manager won this round
    except Exception as exc:  # an unreadable lease or an unreachable bucket: not leading
        log.debug("lease attempt lost", error=repr(exc))
        return False
