"""uvicorn's httptools protocol with a response's head and body sent in one write.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`,
and the body when it sends `http.response.body`: two `send()` calls and two TCP segments for every
answer, however small. The client then wakes (and reads) twice, and on loopback each segment costs
the sender the receiver's TCP processing as well. `CoalescingHttpToolsProtocol` holds the first write
of a burst until the loop iteration ends, and sends it with any write that follows in the same
iteration as one: a JSON answer leaves in one segment. Everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Coalescing:
    """A connection's transport whose writes of one loop iteration go out together (in order)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._release)
            return
        self._held = None
        self._transport.writelines((held, data))

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def close(self) -> None:
        self._release()
        self._transport.close()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, set_protocol, ...
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # (flow control and addresses from the real transport)
        self.transport = _Coalescing(transport, self.loop)  # type: ignore[assignment]
