"""Bad input at the edge gets the spec's JSON-RPC code and HTTP status, and the edge keeps serving."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from conftest import demo_server, federation
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio

MODERN_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/list",
}
LEGACY_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def error_code(response: httpx2.Response) -> int | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


async def assert_still_serving(url: str) -> None:
    async with Client(url) as client:
        result = await client.call_tool("demo_echo", {"text": "still here"})
        assert result.structured_content == {"result": "still here"}


@pytest.mark.parametrize("headers", [MODERN_HEADERS, LEGACY_HEADERS], ids=["modern", "legacy"])
async def test_malformed_json(nats_server: NatsServer, headers: dict[str, str]) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=headers)
        assert response.status_code == 400
        assert error_code(response) == jsonrpc.PARSE_ERROR
        assert "Traceback" not in response.text
        await assert_still_serving(fed.url)


@pytest.mark.parametrize("headers", [MODERN_HEADERS, LEGACY_HEADERS], ids=["modern", "legacy"])
async def test_wrong_jsonrpc_shape(nats_server: NatsServer, headers: dict[str, str]) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, json={"jsonrpc": "1.0", "method": 42, "id": {"x": 1}}, headers=headers)
        assert response.status_code == 400
        assert error_code(response) == jsonrpc.INVALID_REQUEST
        assert "Traceback" not in response.text
        await assert_still_serving(fed.url)


async def test_oversize_body(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        big = (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo_echo","arguments":{"text":"'
            + (b"x" * (2 * 1024 * 1024))
            + b'"}}}'
        )
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, content=big, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call"})
        assert response.status_code == 413
        assert error_code(response) == jsonrpc.INVALID_REQUEST
        await assert_still_serving(fed.url)


async def test_modern_header_body_mismatch_is_400_32020(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "demo_echo",
                "arguments": {"text": "x"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(
                fed.url, json=body, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "demo_add"}
            )
            assert response.status_code == 400
            assert error_code(response) == -32020
            good = await http.post(
                fed.url, json=body, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "demo_echo"}
            )
            assert good.status_code == 200
            assert good.json()["result"]["structuredContent"] == {"result": "x"}
