"""Opaque cursors over the edge's merged lists."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from fedmcp.shared import jsonrpc
from mcp.shared.exceptions import MCPError

PAGE_SIZE = 100


class _Cursor(msgspec.Struct, array_like=True):
    kind: str
    offset: int


def page(items: list[Any], cursor: str | None, kind: str, size: int = PAGE_SIZE) -> tuple[list[Any], str | None]:
    """One page of `items` and the cursor of the next, if any.

    A cursor names its list kind and offset. When the catalog changes between
    pages the offset still applies; clients are told by list_changed to list again.
    """
    start = 0
    if cursor:
        try:
            parsed = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()), type=_Cursor)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message="Invalid cursor") from None
        if parsed.kind != kind or parsed.offset < 0:
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message="Invalid cursor")
        start = parsed.offset
    end = start + size
    next_cursor = None
    if end < len(items):
        next_cursor = base64.urlsafe_b64encode(msgspec.json.encode(_Cursor(kind, end))).decode()
    return items[start:end], next_cursor
