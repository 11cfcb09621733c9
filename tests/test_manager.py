"""The control plane: never on the request path, and a restart loses nothing."""

from __future__ import annotations

import anyio
import pytest
from conftest import demo_server, federation
from fedmcp.cli.inspect import read_state, render
from fedmcp.manager.main import run_manager
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio


async def test_calls_flow_without_manager_and_a_restart_rebuilds_the_registry(nats_server: NatsServer) -> None:
    # The conftest federation runs its own manager; here the manager's life is the subject.
    async with federation(nats_server.url, manager=False) as fed:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: run_manager(nats_server.url, evict_after=2, stop=stop, task_status=task_status)
            )
            await fed.add_server("demo", demo_server())
            stop.set()  # the only manager goes away
        async with Client(fed.url) as client:
            for i in range(20):
                result = await client.call_tool("demo_add", {"a": i, "b": 1})
                assert result.structured_content == {"result": i + 1}
        # A new adapter while no manager runs: unknown until a manager returns.
        await fed.add_server("late", demo_server(), wait=False)
        assert fed.edge is not None
        assert "late" not in fed.edge.view.table.servers
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: run_manager(nats_server.url, evict_after=2, stop=stop, task_status=task_status)
            )
            await fed.wait_for_server("late", present=True)
            catalogs, instances = await read_state(nats_server.url, "fedmcp")
            assert set(catalogs) == {"demo", "late"}
            assert sorted(i.server for i in instances) == ["demo", "late"]
            stop.set()


async def test_ls_shows_servers_instances_and_conflicts(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("one", demo_server(prefix=""))
        await fed.add_server("two", demo_server(prefix=""))
        catalogs, instances = await read_state(nats_server.url, "fedmcp")
        text = render(catalogs, instances)
        lines = text.splitlines()
        assert any(line.split()[:3] == ["one", "2026-07-28", "2"] for line in lines)
        assert any(line.split()[:3] == ["two", "2026-07-28", "2"] for line in lines)
        assert sum(1 for line in lines if " ready " in line) == 2
        assert "CONFLICTS" in text
        assert "tool 'add' of server 'two' clashes with server 'one'" in text


async def test_adapters_and_managers_answer_srv_ping(nats_server: NatsServer) -> None:
    import nats
    from fedmcp.shared import discovery

    async with federation(nats_server.url) as fed:
        await fed.add_server("one", demo_server())
        await fed.add_server("two", demo_server())
        nc = await nats.connect(nats_server.url)
        try:
            adapters = await discovery.ping_all(nc, discovery.ADAPTER, expected=2)
            managers = await discovery.ping_all(nc, discovery.MANAGER, expected=1)
        finally:
            await nc.close()
        assert sorted(a["metadata"]["server"] for a in adapters) == ["one", "two"]
        assert {a["type"] for a in adapters} == {"io.nats.micro.v1.ping_response"}
        assert len(managers) == 1


async def test_two_managers_one_leader_and_takeover(nats_server: NatsServer) -> None:
    async with federation(nats_server.url, manager=False) as fed:
        stops = [anyio.Event(), anyio.Event()]
        async with anyio.create_task_group() as tg:
            for stop in stops:
                await tg.start(
                    lambda task_status, stop=stop: run_manager(
                        nats_server.url, evict_after=2, stop=stop, task_status=task_status
                    )
                )
            await fed.add_server("demo", demo_server())
            stops[0].set()  # the first manager (the leader: it started first) goes away
            await fed.add_server("late", demo_server())  # the follower has taken over and registers it
            catalogs, instances = await read_state(nats_server.url, "fedmcp")
            assert set(catalogs) == {"demo", "late"}
            assert sorted(i.server for i in instances) == ["demo", "late"]
            stops[1].set()
