"""The control plane: never on the request path, and a restart loses nothing."""

from __future__ import annotations

import itertools
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from conftest import demo_server, federation
from fedmcp.adapter.service import Adapter
from fedmcp.cli.inspect import read_state, render
from fedmcp.manager.main import run_manager
from fedmcp.shared import buckets, bus, discovery, envelopes, headers
from fedmcp.shared.envelopes import Heartbeat, Instance
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.subjects import Subjects
from mcp import Client
from mcp.shared.exceptions import MCPError
from procs import Proc

pytestmark = pytest.mark.anyio


async def start_manager(tg: TaskGroup, nats_url: str) -> Callable[[], Awaitable[None]]:
    """Run a manager in `tg`; returns a function that stops it and waits until it is gone."""
    stop, gone = anyio.Event(), anyio.Event()

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await run_manager(nats_url, evict_after=2, stop=stop, task_status=task_status)
        finally:
            gone.set()

    await tg.start(run)

    async def stop_it() -> None:
        stop.set()
        with anyio.fail_after(10):
            await gone.wait()

    return stop_it


async def heartbeats(nats_url: str, adapter: Adapter, count: int) -> None:
    """Until `adapter` has announced itself and sent `count` heartbeats after that."""
    with anyio.fail_after(20):
        await adapter.ready.wait()  # set once its announce is out
    nc = await bus.connect(nats_url, name="test-heartbeats")
    try:
        sub = await nc.subscribe(Subjects().heartbeat(adapter.name, adapter.instance.instance))
        for _ in range(count):
            await sub.next_msg(timeout=10)
    finally:
        await nc.close()


async def running_managers(nats_url: str) -> int:
    """How many managers answer a `$SRV.PING` within a second."""
    nc = await bus.connect(nats_url, name="test-ping")
    try:
        return len(await discovery.ping_all(nc, discovery.MANAGER, expected=2, timeout=1))
    finally:
        await nc.close()


async def test_calls_flow_without_manager_and_a_restart_rebuilds_the_registry(nats_server: NatsServer) -> None:
    # The manager's life is the subject: the federation runs none of its own.
    async with anyio.create_task_group() as managers:
        stop_manager = await start_manager(managers, nats_server.url)
        async with federation(nats_server.url, manager=False) as fed:
            await fed.add_server("demo", demo_server())
            await stop_manager()  # the only manager goes away
            async with Client(fed.url) as client:
                for i in range(20):
                    result = await client.call_tool("demo_add", {"a": i, "b": 1})
                    assert result.structured_content == {"result": i + 1}
            # A new adapter while no manager runs: it announces and heartbeats, and nobody registers it
            # (for 5 s: longer than a manager's lease, so a standby manager would have taken over).
            late = await fed.add_server("late", demo_server(), wait=False)
            await heartbeats(nats_server.url, late, 10)
            assert fed.edge is not None
            assert "late" not in fed.edge.view.table.servers
            assert set((await read_state(nats_server.url, "fedmcp"))[0]) == {"demo"}
            stop_manager = await start_manager(managers, nats_server.url)
            await fed.wait_for_server("late", present=True)
            catalogs, instances = await read_state(nats_server.url, "fedmcp")
            assert set(catalogs) == {"demo", "late"}
            assert sorted(i.server for i in instances) == ["demo", "late"]
            await stop_manager()


async def test_kill_9_of_the_only_manager_under_load_fails_no_call_and_a_restart_recovers(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path
) -> None:
    def start() -> Proc:
        args = ["-m", "fedmcp.manager.main", "--nats-url", nats_server.url, "--evict-after", "2"]
        procs.append(Proc([sys.executable, *args], tmp_path / f"manager{len(procs)}.log"))
        return procs[-1]

    manager = start()
    # Its edge waits for the buckets the manager process creates.
    async with federation(nats_server.url, manager=False) as fed:
        for _ in range(2):
            await fed.add_server("demo", demo_server())
        failures: list[object] = []
        done = 0
        stop = anyio.Event()
        progress = anyio.Event()

        async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
            with anyio.fail_after(timeout):
                while not condition():
                    await progress.wait()

        async def load(client: Client, tool: str, n: int) -> None:
            nonlocal done, progress
            for i in itertools.count():
                if stop.is_set():
                    return
                try:
                    result = await client.call_tool(tool, {"a": i, "b": n})
                    if result.structured_content == {"result": i + n}:
                        done += 1
                    else:
                        failures.append((tool, result))
                except MCPError as exc:
                    failures.append((tool, exc.error.code, exc.error.message))
                progress.set()
                progress = anyio.Event()

        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(load, client, "demo_add", n)
            target = done + 20
            await until(lambda: done >= target)
            assert await running_managers(nats_server.url) == 1
            manager.kill()  # kill -9 of the only manager, calls in flight
            assert manager.p.returncode == -signal.SIGKILL
            target = done + 40
            await until(lambda: done >= target)
            # A new adapter while no manager runs: it announces and heartbeats, and nobody registers it
            # (for 5 s: longer than a manager's lease, so a standby manager would have taken over).
            late = await fed.add_server("late", demo_server(), wait=False)
            await heartbeats(nats_server.url, late, 10)
            assert fed.edge is not None
            assert "late" not in fed.edge.view.table.servers
            target = done + 40
            await until(lambda: done >= target)
            start()  # the manager comes back: it takes the lease when the killed one's expires
            await fed.wait_for_server("late", present=True)
            tg.start_soon(load, client, "late_add", 100)
            late_target = late.served + 20
            target = done + 40
            await until(lambda: done >= target and late.served >= late_target)
            stop.set()
        assert failures == [], failures[:3]
        catalogs, instances = await read_state(nats_server.url, "fedmcp")
        assert set(catalogs) == {"demo", "late"}
        assert sorted(i.server for i in instances) == ["demo", "demo", "late"]


async def test_a_heartbeat_handled_after_the_goodbye_does_not_bring_the_instance_back(
    nats_server: NatsServer,
) -> None:
    # Heartbeats and goodbyes have subscriptions of their own, so the manager can handle a heartbeat
    # sent just before the goodbye (or during the rest of the shutdown) after the goodbye.
    subjects = Subjects()

    async def registry_has(instance: str, present: bool) -> None:
        with anyio.fail_after(10):  # the registry bucket: polled
            while True:
                if (instance in {i.instance for i in (await read_state(nats_server.url, "fedmcp"))[1]}) == present:
                    return
                await anyio.sleep(0.05)

    def heartbeat(instance: str, started_at: float) -> bytes:
        return envelopes.encode(Heartbeat(instance=Instance(server="ghost", instance=instance, started_at=started_at)))

    async with federation(nats_server.url, evict_after=30):
        nc = await bus.connect(nats_server.url, name="test-ghost")
        try:
            started = time.time()
            await nc.publish(subjects.heartbeat("ghost", "g1"), heartbeat("g1", started), headers=headers.base())
            await registry_has("g1", True)
            await nc.publish(subjects.goodbye("ghost", "g1"), heartbeat("g1", started), headers=headers.base())
            await registry_has("g1", False)
            await nc.publish(subjects.heartbeat("ghost", "g1"), heartbeat("g1", started), headers=headers.base())
            await nc.publish(subjects.heartbeat("ghost", "g2"), heartbeat("g2", started), headers=headers.base())
            await registry_has("g2", True)  # handled in order: the late heartbeat of g1 has been too
            await registry_has("g1", False)
            # Started again under the same id: that is a new instance.
            await nc.publish(subjects.heartbeat("ghost", "g1"), heartbeat("g1", started + 1), headers=headers.base())
            await registry_has("g1", True)
        finally:
            await nc.close()


async def test_the_routing_table_follows_instances_joining_and_leaving_behind_an_unchanged_catalog(
    nats_server: NatsServer,
) -> None:
    # A replica of the same server brings the same catalog: the catalog is not written again, yet the
    # edges must see who serves it (the manager rewrites the entry's instances).
    async with federation(nats_server.url) as fed:
        assert fed.edge is not None
        first = await fed.add_server("demo", demo_server())
        second = await fed.add_server("demo", demo_server())
        ids = {first.instance.instance, second.instance.instance}
        with anyio.fail_after(20):
            await fed.edge.view.wait_until(lambda table: set(table.servers["demo"].instances) == ids)
            second.stop()
            await fed.edge.view.wait_until(lambda table: table.servers["demo"].instances == [first.instance.instance])
        catalogs, _ = await read_state(nats_server.url, "fedmcp")
        assert catalogs["demo"].instances == [first.instance.instance]


async def test_taking_over_while_adapters_announce(nats_server: NatsServer) -> None:
    # A follower becoming leader writes what it learnt, one KV write at a time; an announce handled
    # while a write waits adds an instance. (Iterating the live dict failed: "dictionary changed size",
    # and the west manager of the topology test died of it.)
    from fedmcp.manager.registry import Registry

    subjects = Subjects()
    nc = await bus.connect(nats_server.url, name="test-takeover")
    try:
        js = nc.jetstream(timeout=5)
        instances_kv = await buckets.open_bucket(js, subjects, buckets.REGISTRY, buckets.LOCAL)
        started = time.time()
        announced: list[Instance] = []

        class AnnouncedMeanwhile:
            """The real bucket; each write lets one announce in while it waits."""

            async def put(self, key: str, value: bytes) -> int:
                if len(announced) < 5:
                    announced.append(Instance(server="ghost", instance=f"new{len(announced)}", started_at=started))
                    await registry._upsert(announced[-1])
                return await instances_kv.put(key, value)

            def __getattr__(self, name: str) -> Any:
                return getattr(instances_kv, name)

        registry = Registry(
            nc,
            subjects,
            AnnouncedMeanwhile(),  # type: ignore[arg-type]
            await buckets.open_bucket(js, subjects, buckets.CATALOGS, buckets.LOCAL),
            leader=False,
        )
        for i in range(3):
            await registry._upsert(Instance(server="ghost", instance=f"old{i}", started_at=started))
        with anyio.fail_after(20):
            await registry.lead()
        _, instances = await read_state(nats_server.url, "fedmcp")
        assert {i.instance for i in instances} == {f"old{i}" for i in range(3)} | {f"new{i}" for i in range(5)}
    finally:
        await nc.close()


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
    async with anyio.create_task_group() as managers:
        # The first to start takes the lease: the leader.
        stops = [await start_manager(managers, nats_server.url) for _ in range(2)]
        async with federation(nats_server.url, manager=False) as fed:
            await fed.add_server("demo", demo_server())
            await stops[0]()  # the leader goes away
            await fed.add_server("late", demo_server())  # the follower has taken over and registers it
            catalogs, instances = await read_state(nats_server.url, "fedmcp")
            assert set(catalogs) == {"demo", "late"}
            assert sorted(i.server for i in instances) == ["demo", "late"]
            await stops[1]()


async def test_fedmcp_ls_without_a_reachable_nats_says_so_and_ends() -> None:
    """A wrong URL is an answer within seconds, not a wait forever (the CLI's one-shot connection)."""
    url = f"nats://127.0.0.1:{free_port()}"
    for extra in ([], ["--sessions"]):
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, "-m", "fedmcp.cli.main", "ls", "--nats-url", url, *extra], check=False
            )
        assert done.returncode == 1
        assert b"cannot read the registry" in done.stderr and b"Traceback" not in done.stderr
