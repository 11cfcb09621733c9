"""Resource subscriptions through the federation: handshake-era subscribe/unsubscribe and 2026-07-28 listen."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import federation, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("back", ["auto", "legacy"])
async def test_legacy_subscribe_unsubscribe(nats_server: NatsServer, back: str) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("watched", python_server("watched.py", era=back))
        updates: list[str] = []
        arrived = anyio.Event()

        async def on_message(message: Any) -> None:
            nonlocal arrived
            if isinstance(message, types.ResourceUpdatedNotification):
                updates.append(str(message.params.uri))
                arrived.set()

        async with Client(fed.url, mode="legacy", message_handler=on_message) as client:
            assert client.server_capabilities.resources and client.server_capabilities.resources.subscribe
            await client.subscribe_resource("watch://a")
            await client.subscribe_resource("watch://b")
            assert dict(adapter.backend.subscriptions.counts) == {"watch://a": 1, "watch://b": 1}
            await client.call_tool("watched_touch", {"uri": "watch://a"})
            with anyio.fail_after(10):
                await arrived.wait()
            assert updates == ["watch://a"]
            await client.unsubscribe_resource("watch://a")
            assert dict(adapter.backend.subscriptions.counts) == {"watch://b": 1}
            arrived = anyio.Event()
            await client.call_tool("watched_touch", {"uri": "watch://a"})  # nobody wants a any more
            await client.call_tool("watched_touch", {"uri": "watch://b"})
            with anyio.fail_after(10):
                await arrived.wait()
            assert updates == ["watch://a", "watch://b"]  # b arrived after a would have: a was not sent


async def test_two_clients_share_one_backing_subscription(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("watched", python_server("watched.py", era="legacy"))
        async with Client(fed.url, mode="legacy") as one, Client(fed.url, mode="legacy") as two:
            await one.subscribe_resource("watch://a")
            await two.subscribe_resource("watch://a")
            assert dict(adapter.backend.subscriptions.counts) == {"watch://a": 1}  # one per edge, not per client
            await one.unsubscribe_resource("watch://a")
            assert dict(adapter.backend.subscriptions.counts) == {"watch://a": 1}
            await two.unsubscribe_resource("watch://a")
            assert dict(adapter.backend.subscriptions.counts) == {}


@pytest.mark.parametrize("back", ["auto", "legacy"])
async def test_modern_listen_with_resource_subscriptions(nats_server: NatsServer, back: str) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("watched", python_server("watched.py", era=back))
        async with Client(fed.url, mode="2026-07-28") as client:
            async with client.listen(resource_subscriptions=["watch://b"]) as sub:
                assert sub.honored.resource_subscriptions == ["watch://b"]
                assert dict(adapter.backend.subscriptions.counts) == {"watch://b": 1}
                await client.call_tool("watched_touch", {"uri": "watch://b"})
                with anyio.fail_after(10):
                    async for event in sub:
                        assert getattr(event, "uri", None) == "watch://b"
                        break
            with anyio.fail_after(5):
                await adapter.backend.subscriptions.wait_empty()
