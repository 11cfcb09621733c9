"""Payloads larger than one NATS message: split into ordered chunk frames, reassembled with a limit.

NATS keeps the order of one publisher's messages on one subject, so a reply
stream can carry `chunk` frames followed by the final frame; the receiver
appends them as they come and never holds more than the configured limit.
"""

from __future__ import annotations

from collections.abc import Iterator

DEFAULT_LIMIT = 64 * 1024 * 1024
"""Largest JSON-RPC message fedmcp carries end to end (bytes on the wire)."""
_HEADROOM = 8 * 1024
"""Room left in each NATS message for headers."""
_MIN_CHUNK = 64 * 1024


def chunk_size(max_payload: int) -> int:
    return max(_MIN_CHUNK, max_payload - _HEADROOM)


def split(payload: bytes, size: int) -> Iterator[bytes]:
    """The payload in `size`-byte pieces; a payload that fits is one piece."""
    view = memoryview(payload)
    for start in range(0, max(len(payload), 1), size):
        yield bytes(view[start : start + size])


def too_large_message(size: int, limit: int) -> str:
    return f"message of {size} bytes exceeds fedmcp's payload limit of {limit} bytes (max_payload_bytes)"


class Assembler:
    """Collects the chunks of one message; refuses to grow past `limit`."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._filled = 0
        """Bytes of `_buffer` received so far (it may be allocated ahead, at the announced size)."""
        self.overflow = 0
        """Bytes seen past the limit (0 while within it)."""

    @property
    def received(self) -> int:
        """Bytes added so far (0 after an overflow)."""
        return self._filled

    def add(self, piece: bytes, size: str | None = None) -> None:
        """Append `piece`; `size`: the whole message's size as its first chunk announced it (headers.SIZE).
        A buffer grown chunk by chunk is copied as it grows and leaves the allocator's heap fragmented:
        a 50 MB read briefly took up to twice the payload in the edge's RSS. Never more than `limit` is
        allocated, whatever a sender announces: as much as it could make the receiver hold by sending it."""
        if self.overflow or self._filled + len(piece) > self.limit:
            self.overflow += len(piece) + self._filled
            self._buffer, self._filled = bytearray(), 0
            return
        # (12 digits is far past any limit, and keeps int() from a digit string of any length)
        announced = int(size) if size is not None and size.isdecimal() and len(size) <= 12 else None
        if not self._filled and announced is not None and len(piece) <= announced <= self.limit:
            self._buffer = bytearray(announced)
        end = self._filled + len(piece)
        self._buffer[self._filled : end] = piece  # past a too-small announced size this appends
        self._filled = end

    def finish(self, last: bytes) -> bytes | bytearray:
        if not self._filled and not self.overflow:
            return last
        self.add(last)
        data, self._buffer = self._buffer, bytearray()
        if len(data) > self._filled:  # fewer bytes came than were announced
            del data[self._filled :]
        self._filled = 0
        return data
