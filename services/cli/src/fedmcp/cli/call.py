"""`fedmcp call`: call one tool through an edge with the SDK client."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client


async def call_tool(url: str, tool: str, arguments: dict[str, Any], mode: str) -> dict[str, Any]:
    async with Client(url, mode=mode) as client:
        result = await client.call_tool(tool, arguments)
        dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped


async def list_tools(url: str, mode: str) -> list[str]:
    async with Client(url, mode=mode) as client:
        return [t.name for t in (await client.list_tools()).tools]


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
