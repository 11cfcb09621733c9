"""Two regions and a leaf site on one machine, from the files in deploy/nats/.

Seven real nats-server processes: the supercluster (east-1..3, west-1..3, one
JetStream domain) and the leaf site edge-1 (its own domain), each started from its
deploy/nats file. The only change to those files: each hub server's gateway and
leaf-node listeners move to a neighbouring port and advertise the original one,
where a `Link` forwards, so the test can cut and heal the links between regions.
Every fedmcp service is its own OS process, connected to its own region's servers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import httpx2
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from conftest import python_server
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.ops_http import bind, serve_asgi
from mcp import Client
from mcp.shared.exceptions import MCPError
from netlink import Link
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp import Receiver, child_of, tree
from procs import Proc, fedmcp, metric, wait_for_tools

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
HUB = [f"{region}-{n}" for region in ("east", "west") for n in (1, 2, 3)]
CRED = "fedmcp:fedmcp-secret@"  # deploy/nats/accounts.conf's development user


def client_port(conf: str) -> int:
    return int(re.search(r"^listen: 127\.0\.0\.1:(\d+)", conf, re.M).group(1))  # type: ignore[union-attr]


def move_listener(conf: str, block: str, links: list[Link]) -> str:
    """Listen on port+5 in `block`, advertise the original port, and forward it with a Link."""
    pattern = re.compile(rf"({block} \{{[^}}]*?listen: 127\.0\.0\.1:)(\d+)", re.S)
    port = int(pattern.search(conf).group(2))  # type: ignore[union-attr]
    links.append(Link(port, port + 5))
    return pattern.sub(rf'\g<1>{port + 5}\n  advertise: "127.0.0.1:{port}"', conf, count=1)


@dataclass
class Site:
    name: str
    url: str
    js: list[str]
    edge_url: str = ""
    adapters: dict[str, Proc] = field(default_factory=dict)

    def region_args(self) -> list[str]:
        return ["--region", self.name, *self.js]


@dataclass
class Topology:
    sites: dict[str, Site]
    gateways: list[Link]
    leaf_links: list[Link]
    procs: list[Proc]
    logs: Path
    env: dict[str, str]
    """Every process exports its spans to `traces` (OTLP/HTTP)."""
    traces: Receiver
    portal: BlockingPortal

    def start_adapter(self, site: Site, server: str) -> Proc:
        backing = msgspec.json.encode(python_server("regional.py", env={"SITE": site.name})).decode()
        args = ["adapter", "--nats-url", site.url, "--name", server, "--server-json", backing, "--heartbeat", "0.5"]
        log = self.logs / f"adapter-{server}-{site.name}-{len(self.procs)}.log"
        proc = Proc(fedmcp(*args, "--region", site.name), log, env=self.env)
        self.procs.append(proc)
        site.adapters[server] = proc
        return proc


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("topology")
    shutil.copytree(ROOT / "deploy" / "nats", work / "nats")
    gateways: list[Link] = []
    leaf_links: list[Link] = []
    servers: list[NatsServer] = []
    for name in HUB:
        path = work / "nats" / "supercluster" / f"{name}.conf"
        conf = move_listener(path.read_text(), "gateway", gateways)
        conf = move_listener(conf, "leafnodes", leaf_links)
        path.write_text(conf)
        servers.append(NatsServer(work / name, port=client_port(conf), config_file=path))
    leaf_conf = work / "nats" / "leaf" / "edge-1.conf"
    servers.append(NatsServer(work / "edge-1", port=client_port(leaf_conf.read_text()), config_file=leaf_conf))
    procs: list[Proc] = []
    with start_blocking_portal() as portal, ExitStack() as cleanup:
        traces, sock, stop = Receiver(), bind("127.0.0.1", 0), anyio.Event()
        portal.start_task_soon(partial(serve_asgi, traces.app(), sock, stop=stop))
        cleanup.callback(portal.call, stop.set)
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sock.getsockname()[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        cleanup.callback(lambda: [s.stop() for s in servers])
        cleanup.callback(lambda: [link.close() for link in gateways + leaf_links])
        cleanup.callback(lambda: [proc.stop() for proc in reversed(procs)])
        for server in servers:
            server.start()

        def hub_url(region: str) -> str:
            return ",".join(f"nats://{CRED}127.0.0.1:{s.port}" for s in servers[:6] if f"/{region}-" in str(s.data_dir))

        sites = {
            "east": Site("east", hub_url("east"), ["--js-cluster", "east", "--js-replicas", "3"]),
            "west": Site("west", hub_url("west"), ["--js-cluster", "west", "--js-replicas", "3"]),
            "edge1": Site("edge1", servers[6].url, []),
        }
        topo = Topology(sites, gateways, leaf_links, procs, work, env, traces, portal)
        for site in sites.values():
            args = ["--nats-url", site.url, *site.region_args()]
            manager = fedmcp("manager", *args, "--evict-after", "2")
            procs.append(Proc(manager, work / f"manager-{site.name}.log", env=env))
            port = free_port()
            site.edge_url = f"http://127.0.0.1:{port}/mcp"
            procs.append(
                Proc(fedmcp("edge", *args, "--anonymous", "--port", str(port)), work / f"edge-{site.name}.log", env=env)
            )
        topo.start_adapter(sites["east"], "both")
        topo.start_adapter(sites["west"], "both")
        topo.start_adapter(sites["west"], "onlywest")
        topo.start_adapter(sites["edge1"], "local")
        yield topo


EVERYTHING = {"both_where", "both_slow_where", "onlywest_where", "local_where"}


async def ready(topology: Topology) -> None:
    for site in topology.sites.values():
        await wait_for_tools(site.edge_url, EVERYTHING, timeout=60)


async def where(url: str, tool: str, calls: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with Client(url) as client:
        for _ in range(calls):
            result = await client.call_tool(tool, {})
            assert not result.is_error, result
            seen[result.structured_content["result"]] += 1  # type: ignore[index]
    return seen


async def test_a_server_in_one_region_answers_clients_of_every_region(topology: Topology) -> None:
    await ready(topology)
    for site in ("east", "west", "edge1"):
        assert await where(topology.sites[site].edge_url, "onlywest_where", 10) == {"west": 10}
    # The leaf site's server is reachable from both regions over the leaf link.
    assert await where(topology.sites["west"].edge_url, "local_where", 10) == {"edge1": 10}


async def test_calls_stay_in_the_callers_region_when_it_has_replicas(topology: Topology) -> None:
    await ready(topology)
    assert await where(topology.sites["east"].edge_url, "both_where", 100) == {"east": 100}
    assert await where(topology.sites["west"].edge_url, "both_where", 100) == {"west": 100}


async def test_failover_to_the_other_region_and_back(topology: Topology) -> None:
    await ready(topology)
    east = topology.sites["east"]
    seen: list[str] = []
    failures: list[tuple[int, str]] = []
    stop = anyio.Event()
    progress = anyio.Event()

    async def load(client: Client) -> None:
        nonlocal progress
        while not stop.is_set():
            try:
                result = await client.call_tool("both_where", {})
                seen.append(result.structured_content["result"])  # type: ignore[index]
            except MCPError as exc:
                failures.append((exc.error.code, exc.error.message))
            progress.set()
            progress = anyio.Event()

    async def until(predicate: object, timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while not predicate():  # type: ignore[operator]
                await progress.wait()

    async with Client(east.edge_url) as client, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(load, client)
        await until(lambda: len(seen) >= 20)
        assert set(seen) == {"east"}
        east.adapters["both"].kill()  # kill -9 of every east replica, calls in flight
        killed_at = len(seen)
        await until(lambda: seen[killed_at:].count("west") >= 40)
        topology.start_adapter(east, "both")
        await until(lambda: "east" in seen[killed_at:][seen[killed_at:].index("west") :], timeout=90)
        back_at = len(seen)
        await until(lambda: len(seen) >= back_at + 40)
        stop.set()
    assert failures == [], failures[:3]  # the call is read-only: every one in flight was retried
    after = seen[back_at + 4 :]  # calls sent before the first east answer may still be in west
    assert set(after) == {"east"}, Counter(after)


async def test_a_cross_region_failover_is_one_trace(topology: Topology) -> None:
    await ready(topology)
    east = topology.sites["east"]
    started = anyio.Event()
    results: list[object] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with Client(east.edge_url) as client, anyio.create_task_group() as tg:

        async def call() -> None:
            result = await client.call_tool("both_slow_where", {"seconds": 3}, progress_callback=on_progress)
            results.append(result.structured_content)

        tg.start_soon(call)
        with anyio.fail_after(30):
            await started.wait()  # running on east's replica (in-region affinity)
        east.adapters["both"].kill()
    assert results == [{"result": "west"}]  # lost with its instance, read-only: failed over to west
    topology.start_adapter(east, "both")

    def wait_for(name: str) -> tuple[str, trace_pb2.Span]:
        return topology.portal.call(topology.traces.wait_for, name)

    service, server_span = await anyio.to_thread.run_sync(wait_for, "tools/call both_slow_where")
    await anyio.to_thread.run_sync(wait_for, "MCP send tools/call slow_where")
    assert service == "fedmcp-edge"
    spans = topology.traces.chain_below(server_span)
    producer = child_of(spans, server_span, trace_pb2.Span.SPAN_KIND_PRODUCER, "fedmcp-edge")
    print(tree(topology.traces, server_span))  # docs/observability.md shows one
    assert [e.name for e in producer.events] == ["failover"]
    consumers = [s for svc, s in spans if s.parent_span_id == producer.span_id and svc == "fedmcp-adapter"]
    # The east consumer died with its process before exporting; the west one carried the call.
    assert [topology.traces.region_of[c.span_id] for c in consumers] == ["west"]
    backing = child_of(spans, consumers[0], trace_pb2.Span.SPAN_KIND_CLIENT, "fedmcp-adapter")
    assert backing.name == "MCP send tools/call slow_where"
    assert topology.traces.region_of[server_span.span_id] == "east"
    async with httpx2.AsyncClient(timeout=10) as http:
        edge_metrics = (await http.get(east.edge_url.replace("/mcp", "/metrics"))).text
    assert metric(edge_metrics, "fedmcp_edge_retries_total", server="both", reason="failover") >= 1


async def registry(site: Site) -> dict[str, object]:
    """`fedmcp ls --json` in the site's region, as an operator would run it."""
    result = await anyio.run_process(fedmcp("ls", "--json", "--nats-url", site.url, *site.region_args()), check=True)
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


async def test_a_partition_keeps_each_region_serving_and_its_registry_readable(topology: Topology) -> None:
    await ready(topology)
    east, west = topology.sites["east"], topology.sites["west"]
    for link in topology.gateways:
        link.cut()
    try:
        assert await where(east.edge_url, "both_where", 20) == {"east": 20}
        assert await where(west.edge_url, "both_where", 20) == {"west": 20}
        # Each region's registry answers from its own buckets, JetStream meta leader or not.
        with anyio.fail_after(30):
            while True:  # east's manager notices west's instances have fallen silent
                east_view = await registry(east)
                if "west" not in {i["region"] for i in east_view["instances"]}:  # type: ignore[attr-defined, index]
                    break
                await anyio.sleep(0.5)
        assert {(i["server"], i["region"]) for i in east_view["instances"]} == {("both", "east"), ("local", "edge1")}  # type: ignore[attr-defined, index]
        west_view = await registry(west)
        assert {(i["server"], i["region"]) for i in west_view["instances"]} >= {("both", "west"), ("onlywest", "west")}  # type: ignore[attr-defined, index]
        async with Client(east.edge_url) as client:
            with pytest.raises(MCPError):  # unreachable ("no instance") or, once evicted, unknown
                await client.call_tool("onlywest_where", {})
    finally:
        for link in topology.gateways:
            link.heal()
    # Healed: east hears west again and routes to it.
    await wait_for_tools(east.edge_url, EVERYTHING, timeout=60)
    assert await where(east.edge_url, "onlywest_where", 10) == {"west": 10}


async def test_the_leaf_site_serves_its_own_server_with_the_link_down(topology: Topology) -> None:
    await ready(topology)
    site = topology.sites["edge1"]
    for link in topology.leaf_links:
        link.cut()
    try:
        assert await where(site.edge_url, "local_where", 20) == {"edge1": 20}
    finally:
        for link in topology.leaf_links:
            link.heal()
    await wait_for_tools(topology.sites["east"].edge_url, EVERYTHING, timeout=60)
    assert await where(topology.sites["east"].edge_url, "local_where", 10) == {"edge1": 10}
