"""Reassembling chunked bus messages (shared/chunks.py): the announced size only changes where the
bytes are held, never which bytes come out."""

from __future__ import annotations

import pytest
from fedmcp.shared import chunks

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


def assemble(
    pieces: list[bytes], size: str | None, limit: int = chunks.DEFAULT_LIMIT
) -> tuple[chunks.Assembler, bytes | bytearray]:
    assembler = chunks.Assembler(limit)
    for piece in pieces[:-1]:
        assembler.add(piece, size)
    return assembler, assembler.finish(pieces[-1])


@pytest.mark.parametrize(
    "size",
    [None, str(len(PAYLOAD)), "100", str(len(PAYLOAD) * 3), "abc", "²", "9" * 40, "-5", ""],
    ids=["absent", "exact", "too-small", "too-large", "text", "superscript", "huge", "negative", "empty"],
)
def test_the_message_comes_out_whole_whatever_size_is_announced(size: str | None) -> None:
    pieces = list(chunks.split(PAYLOAD, 3000))
    assert len(pieces) == 4
    assembler, result = assemble(pieces, size)
    assert bytes(result) == PAYLOAD
    assert assembler.overflow == 0


def test_an_exact_announcement_fills_one_buffer_allocated_up_front() -> None:
    assembler = chunks.Assembler()
    pieces = list(chunks.split(PAYLOAD, 3000))
    assembler.add(pieces[0], str(len(PAYLOAD)))
    held = assembler._buffer
    assert len(held) == len(PAYLOAD)
    for piece in pieces[1:-1]:
        assembler.add(piece, str(len(PAYLOAD)))
    result = assembler.finish(pieces[-1])
    assert result is held and bytes(result) == PAYLOAD


def test_past_the_limit_nothing_is_kept_and_the_overflow_is_counted() -> None:
    pieces = list(chunks.split(PAYLOAD, 3000))
    assembler, result = assemble(pieces, str(len(PAYLOAD)), limit=5000)
    assert assembler.overflow >= len(PAYLOAD) - 5000
    assert len(result) == 0


def test_an_assembler_is_ready_for_the_next_message_after_finish() -> None:
    assembler = chunks.Assembler()
    first = list(chunks.split(PAYLOAD, 4000))
    for piece in first[:-1]:
        assembler.add(piece, str(len(PAYLOAD)))
    assert bytes(assembler.finish(first[-1])) == PAYLOAD
    assert assembler.finish(b"single") == b"single"
