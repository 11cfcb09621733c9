"""The hot subjects of the data plane, served inline: no task, queue or future per message.

nats-py (2.16) gives every callback subscription a queue and a task: a message is parsed in the
connection's read loop, put on the queue, and the subscription's task wakes to run the callback.
Every publish awaits a chain of coroutines and, on an idle connection, wakes the flusher task with
a future. On a request path that crosses the bus twice per call these wakeups are a large share of
a service's CPU (docs/benchmarks.md). `Inline(nc)`:

- `subscribe(subject, handler)`: the handler is a plain function, called in the read loop with the
  message (headers parsed as nats-py parses them, malformed blocks guarded by natsguard). It must
  not block: what needs to wait belongs in a task the handler starts.
- `post(subject, payload, ...)`: appends the message to nats-py's own pending buffer (so order with
  `publish` holds) and writes the buffer at the end of the loop iteration, once for every message
  posted in it. A slow socket, a reconnect or a closed connection go back to nats-py's flusher, which
  waits for the socket and buffers across reconnects; the errors are the ones `publish` raises.

Everything else (subscription bookkeeping, reconnects, drains, the other subscriptions) is nats-py's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from fedmcp.shared import natsguard
from nats import errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = structlog.get_logger("fedmcp.bus")

Handler = Callable[[Msg], None]

WRITE_BUFFER_LIMIT = 1 << 20
"""Bytes the socket may hold unsent before posting waits for it again (through nats-py's flusher)."""
_HEADER_CACHE_SIZE = 512
_KEY = re.compile(r"^[^\x00-\x20\x7f:]+$")  # nats-py's rule for a header name
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")  # nats-py's: whitespace would inject protocol commands
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_PLAIN = b"NATS/1.0\r\n"
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"
"""What `bytes.strip()` strips (nats-py strips names and values as bytes; `str.strip()` strips more)."""
_SPACE = re.compile(r"\s")
"""What `str.isspace()` finds: nats-py drops a header whose name has any."""


def plain_headers(block: bytes) -> dict[str, str] | None:
    """A header block without a status line and in ASCII (every block fedmcp sends) parsed as nats-py
    parses it, in a third of the time (str methods, no per-character test per name); None for any
    other block, which nats-py's own parser takes."""
    if not block.startswith(_PLAIN) or not block.isascii():
        return None
    out: dict[str, str] = {}
    for line in block[len(_PLAIN) :].decode().split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip(_BYTES_WHITESPACE)
        if _SPACE.search(key) is None:
            out[key] = value.strip(_BYTES_WHITESPACE)
    return out


class Inline:
    """Inline subscriptions and posting for one connection (`Inline.of(nc)` shares one per connection)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = natsguard.harden(nc)
        self._handlers: dict[int, tuple[Handler, dict[bytes, dict[str, str] | None] | None]] = {}
        self._keys: set[str] = set()
        self._write_soon = False
        self._original = nc._process_msg
        nc._process_msg = self._process_msg  # type: ignore[method-assign]

    @classmethod
    def of(cls, nc: NATS) -> Inline:
        existing = getattr(nc, "_fedmcp_inline", None)
        if existing is None:
            existing = cls(nc)
            nc._fedmcp_inline = existing  # type: ignore[attr-defined]
        return existing

    # -- receiving -----------------------------------------------------------------
    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str = "", repeated_headers: bool = False
    ) -> Subscription:
        """`repeated_headers`: the subject's senders repeat a few header blocks (an adapter's replies),
        so parsed blocks are remembered instead of parsed again."""

        async def never_called(msg: Msg) -> None:  # nats-py wants a callback; messages go to `handler`
            handler(msg)

        sub = await self.nc.subscribe(subject, queue=queue, cb=never_called)
        self._handlers[sub._id] = (handler, {} if repeated_headers else None)
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        entry = self._handlers.get(sid)
        nc = self.nc
        if entry is None:
            await self._original(sid, subject, reply, data, headers)
            return
        sub = nc._subs.get(sid)
        if sub is None:  # unsubscribed
            del self._handlers[sid]
            return
        nc.stats["in_msgs"] += 1
        nc.stats["in_bytes"] += len(data)
        sub._received += 1
        handler, cache = entry
        parsed: dict[str, str] | None
        if not headers:
            parsed = None
        elif cache is None:
            parsed = await self._headers(headers)
        elif headers in cache:
            parsed = cache[headers]
        else:
            parsed = await self._headers(headers)
            if len(cache) >= _HEADER_CACHE_SIZE:
                cache.clear()
            cache[headers] = parsed
        msg = Msg(_client=nc, subject=subject.decode(), reply=reply.decode(), data=data, headers=parsed, _sid=sid)
        try:
            handler(msg)
        except Exception:  # one bad message must not stop the read loop
            log.exception("inline handler failed", subject=msg.subject)

    async def _headers(self, block: bytes) -> dict[str, str] | None:
        parsed = plain_headers(block)
        if parsed is None:
            return await self.nc._process_headers(block)
        return parsed or None

    # -- sending -------------------------------------------------------------------
    def post(
        self, subject: str, payload: bytes = b"", *, reply: str = "", headers: Mapping[str, str] | bytes | None = None
    ) -> None:
        """Publish without awaiting; raises what `publish` raises for a closed, draining or full connection.
        `headers` as bytes: a block made by `header_block` (for headers sent again and again)."""
        nc = self.nc
        if nc.is_closed:
            raise errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise errors.ConnectionDrainingError
        size = len(payload)
        if size > nc._max_payload:
            raise errors.MaxPayloadError
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise errors.OutboundBufferLimitError
        if not subject or _BAD_SUBJECT.search(subject) or (reply and _BAD_SUBJECT.search(reply)):
            raise errors.BadSubjectError
        if headers:
            block = headers if isinstance(headers, bytes) else self.header_block(headers)
            command = b"%b %b %b %d %d\r\n%b%b\r\n" % (
                b"HPUB",
                subject.encode(),
                reply.encode(),
                len(block),
                len(block) + size,
                block,
                payload,
            )
        else:
            command = b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), reply.encode(), size, payload)
        nc._pending.append(command)
        nc._pending_data_size += len(command)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += size
        if not self._write_soon:
            self._write_soon = True
            asyncio.get_running_loop().call_soon(self._write)

    def header_block(self, headers: Mapping[str, str]) -> bytes:
        """`headers` on the wire (checked and escaped as nats-py does)."""
        lines = ["NATS/1.0\r\n"]
        for key, value in headers.items():
            if key not in self._keys:
                key = key.strip()
                if not key:
                    continue
                if not _KEY.match(key):
                    raise errors.BadHeaderError(key)
                self._keys.add(key)
            lines.append(f"{key}: {value.strip().translate(_NEWLINES)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()

    def _write(self) -> None:
        self._write_soon = False
        nc = self.nc
        if not nc._pending_data_size:
            return  # nats-py's flusher got there first
        transport: Any = nc._transport
        writer = getattr(transport, "_io_writer", None)
        if (
            nc._status != NATS.CONNECTED
            or writer is None
            or nc._flusher_task is None
            or nc._flusher_task.done()
            or writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT
            or nc._pending_data_size > nc._max_pending_size
        ):
            self._to_flusher()
            return
        try:
            transport.writelines(nc._pending)
        except Exception:  # the socket failed: the flusher reports it and reconnects
            self._to_flusher()
            return
        nc._pending = []
        nc._pending_data_size = 0

    def _to_flusher(self) -> None:
        """Leave the buffer to nats-py's flusher (it waits for the socket, and after a reconnect
        nats-py sends what is buffered)."""
        queue = self.nc._flush_queue
        if queue is not None and queue.empty() and self.nc.is_connected:
            queue.put_nowait(asyncio.get_running_loop().create_future())
