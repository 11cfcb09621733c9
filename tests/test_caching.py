"""2026-07-28 caching hints on merged lists: the shortest ttlMs, private if any part is private."""

from __future__ import annotations

import pytest
from conftest import demo_server, federation, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio


async def raw_tools_list(client: Client) -> dict[str, object]:
    import mcp_types as types
    from pydantic import RootModel

    class Raw(RootModel[dict[str, object]]):
        pass

    request = types.Request[dict[str, object] | None, str](method="tools/list", params=None)
    return (await client.session.send_request(request, Raw)).root


async def test_merged_list_takes_the_shortest_ttl_and_the_narrowest_scope(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("long", python_server("cached.py", args_extra=["60000", "public"]))
        await fed.add_server("short", python_server("cached.py", args_extra=["30000", "public"]))
        async with Client(fed.url, mode="2026-07-28", cache=None) as client:
            listed = await raw_tools_list(client)
            assert (listed["ttlMs"], listed["cacheScope"]) == (30000, "public")
        await fed.add_server("private", python_server("cached.py", args_extra=["90000", "private"]))
        async with Client(fed.url, mode="2026-07-28", cache=None) as client:
            listed = await raw_tools_list(client)
            assert (listed["ttlMs"], listed["cacheScope"]) == (30000, "private")
        await fed.add_server("old", demo_server(era="legacy"))  # handshake era: no hints at all
        async with Client(fed.url, mode="2026-07-28", cache=None) as client:
            listed = await raw_tools_list(client)
            assert (listed["ttlMs"], listed["cacheScope"]) == (0, "private")
