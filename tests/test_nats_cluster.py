"""The federation on the 3-node NATS cluster from deploy/nats/cluster: a node restart under load fails no call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import federation, python_server
from fedmcp.adapter.service import Adapter
from fedmcp.shared import bus, discovery
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.shared.exceptions import MCPError
from nats.aio.client import Client as NATS

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
NODES = {1: 17212, 2: 17222, 3: 17232}


def port_of(nc: NATS) -> int | None:
    """The port of the server `nc` is connected to now."""
    url = nc.connected_url
    return None if url is None else url.port


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
    urls = {n: s.url.replace("nats://", "nats://fedmcp:fedmcp-secret@") for n, s in cluster.items()}
    ledger = tmp_path / "ledger.txt"
    async with federation(",".join(urls.values())) as fed:
        assert fed.edge is not None
        # The node to restart is the edge's; the adapter connects there first too, so the restart
        # cuts both ends of every call (the manager is wherever its client put it).
        node = next(n for n, s in cluster.items() if s.port == port_of(fed.edge.nc))
        order = [urls[node], *(url for n, url in urls.items() if n != node)]
        nc = await bus.connect(",".join(order), name="test-adapter-ledger", dont_randomize=True)
        fed.stack.push_async_callback(nc.close)
        adapter = Adapter(nc, "ledger", python_server("ledger.py", env={"LEDGER": str(ledger)}), heartbeat_interval=0.5)
        fed.adapters["ledger"] = [adapter]
        await fed.tg.start(adapter.run)
        await fed.wait_for_server("ledger", present=True)
        assert port_of(nc) == cluster[node].port
        failures: list[object] = []
        done = 0
        target = 0
        reached = anyio.Event()
        stop = anyio.Event()

        async def load(client: Client) -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    result = await client.call_tool("ledger_balance", {"seconds": 0.01})  # read-only: may fail over
                    if result.structured_content == {"result": "42"}:
                        done += 1
                    else:
                        failures.append(result)
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
            cluster[node].stop()  # the node goes away; its clients reconnect to the others
            target, reached = done + 40, anyio.Event()
            with anyio.fail_after(60):
                await reached.wait()
            # Calls completed again, so both ends are back on the bus, through other nodes.
            assert port_of(fed.edge.nc) != cluster[node].port
            assert port_of(nc) != cluster[node].port
            cluster[node].start()
            # Back in the cluster: a client of the restarted node alone reaches the adapter.
            with anyio.fail_after(30):
                while True:
                    probe = await bus.connect(urls[node], name="test-probe")
                    try:
                        if len(await discovery.ping_all(probe, discovery.ADAPTER, expected=1, timeout=1)) == 1:
                            break
                    finally:
                        await probe.close()
            target, reached = done + 40, anyio.Event()
            with anyio.fail_after(60):
                await reached.wait()
            stop.set()
        assert failures == [], failures[:3]
        assert done >= 100
