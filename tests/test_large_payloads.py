"""Results larger than one NATS message cross the bus in chunks, intact, in both eras; over the limit is a clear error."""

from __future__ import annotations

import base64
import sys

import mcp_types as types
import pytest
from conftest import SERVERS, federation, python_server
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(SERVERS))
from big import blob

pytestmark = pytest.mark.anyio
MODES = ["legacy", "2026-07-28"]
BIG_EVENTS = 256 * 1024 * 1024  # the SDK client caps one SSE event at 1 MiB by default


@pytest.mark.parametrize("mode", MODES)
async def test_50mb_resource_and_20mb_image(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("big", python_server("big.py"))
        transport = streamable_http_client(fed.url, max_sse_event_size=BIG_EVENTS)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            size = 37_500_000  # 50 MB once base64-encoded in the JSON-RPC result
            read = await client.read_resource(f"big://blob/{size}")
            contents = read.contents[0]
            assert isinstance(contents, types.BlobResourceContents)
            assert len(contents.blob) == 50_000_000
            assert base64.b64decode(contents.blob) == blob(size)
            image = await client.call_tool("big_image", {"size": 15_000_000})  # 20 MB of base64
            content = image.content[0]
            assert isinstance(content, types.ImageContent)
            assert base64.b64decode(content.data) == blob(15_000_000)


async def test_over_the_limit_is_a_clear_error(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("big", python_server("big.py"))
        adapter.max_payload_bytes = 10 * 1024 * 1024
        transport = streamable_http_client(fed.url, max_sse_event_size=BIG_EVENTS)
        async with Client(transport) as client:  # type: ignore[arg-type]
            with pytest.raises(MCPError) as err:
                await client.call_tool("big_image", {"size": 9_000_000})
            assert err.value.error.code == jsonrpc.PAYLOAD_TOO_LARGE
            assert str(10 * 1024 * 1024) in err.value.error.message
            small = await client.call_tool("big_image", {"size": 1000})
            assert not small.is_error


@pytest.mark.parametrize("mode", MODES)
async def test_20mb_request_is_pulled_in_pieces(nats_server: NatsServer, mode: str) -> None:
    import hashlib

    async with federation(nats_server.url, max_body_bytes=64 * 1024 * 1024) as fed:
        await fed.add_server("big", python_server("big.py"))
        text = base64.b64encode(blob(15_000_000)).decode()  # 20 MB argument, > the 8 MB NATS messages
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("big_digest", {"data": text})
            assert result.structured_content == {"result": hashlib.sha256(text.encode()).hexdigest()}
