"""The federation on the 3-node NATS cluster from deploy/nats/cluster: a node restart under load fails no call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import federation, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
NODES = {1: 17212, 2: 17222, 3: 17232}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[int, NatsServer]]:
    servers = {
        n: NatsServer(tmp_path / f"n{n}", port=port, config_file=ROOT / "deploy" / "nats" / "cluster" / f"n{n}.conf")
        for n, port in NODES.items()
    }
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


async def test_restart_of_one_cluster_node_under_load(cluster: dict[int, NatsServer], tmp_path: Path) -> None:
    # deploy/nats/accounts.conf's development user for the APP account
    url = ",".join(s.url.replace("nats://", "nats://fedmcp:fedmcp-secret@") for s in cluster.values())
    ledger = tmp_path / "ledger.txt"
    async with federation(url) as fed:
        await fed.add_server("ledger", python_server("ledger.py", env={"LEDGER": str(ledger)}))
        failures: list[object] = []
        done = 0
        target = 0
        reached = anyio.Event()
        stop = anyio.Event()

        async def load(client: Client) -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    await client.call_tool("ledger_balance", {"seconds": 0.01})  # read-only: may fail over
                    done += 1
                    if done >= target:
                        reached.set()
                except MCPError as exc:
                    failures.append((exc.error.code, exc.error.message))

        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(load, client)
            target, reached = done + 20, anyio.Event()
            with anyio.fail_after(30):
                await reached.wait()
            cluster[2].stop()  # a node goes away; clients on it reconnect to the others
            target, reached = done + 40, anyio.Event()
            with anyio.fail_after(60):
                await reached.wait()
            cluster[2].start()
            target, reached = done + 40, anyio.Event()
            with anyio.fail_after(60):
                await reached.wait()
            stop.set()
        assert failures == [], failures[:3]
