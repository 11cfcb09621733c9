"""Fixtures on real parts: a real nats-server, real MCP servers, real SDK clients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from anyio.abc import TaskGroup
from fedmcp.adapter.service import Adapter
from fedmcp.edge.http import serve_http
from fedmcp.edge.runtime import Edge, edge_runtime
from fedmcp.manager.main import run_manager
from fedmcp.shared import bus, telemetry
from fedmcp.shared.config import BackingServer
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.ops_http import bind
from mcp import Client
from procs import Proc

SERVERS = Path(__file__).parent / "servers"


def python_server(script: str, *, args_extra: list[str] | None = None, **kw: Any) -> BackingServer:
    """A backing server run by this interpreter from tests/servers."""
    return BackingServer(command=sys.executable, args=[str(SERVERS / script), *(args_extra or [])], **kw)


def demo_server(**kw: Any) -> BackingServer:
    return BackingServer(command=sys.executable, args=["-m", "fedmcp.demo_server.server"], **kw)


async def probe_saw_cancel(client: Any, seconds: float, timeout: float = 10) -> None:
    """Until probe_server.py reports its `sleep(seconds)` cancelled: the cancel travels client ->
    edge -> NATS -> adapter -> server, and the server handles it in its own time, so ask it."""
    with anyio.fail_after(timeout):
        while True:
            seen = (await client.call_tool("probe_cancelled", {})).structured_content
            if seen == {"result": [seconds]}:
                return
            await anyio.sleep(0.05)


SSE = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def open_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """A handshake-era (2025-11-25) Streamable HTTP session opened by hand: the headers of its requests."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await http.post(url, json=init, headers=SSE)
    session = {**SSE, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    return session


# The answers of a client that can be asked (asker.py's questions): elicitation, sampling, roots.
async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"ok": True})


async def on_sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = params.messages[0].content
    assert isinstance(prompt, types.TextContent)
    text = types.TextContent(type="text", text=f"verse on: {prompt.text}")
    return types.CreateMessageResult(role="assistant", content=text, model="test-model")


async def on_roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])


async def ask_everything(url: str, mode: str, prefix: str = "asker") -> None:
    """asker.py's three tools through `url` by a client that answers (above): each answer as asked."""
    async with Client(
        url,
        mode=mode,  # type: ignore[arg-type]
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        list_roots_callback=on_roots,
    ) as client:
        greet = await client.call_tool(f"{prefix}_greet", {"name": "Ada"})
        assert greet.structured_content == {"result": "hello Ada (confirmed=True)"}
        poem = await client.call_tool(f"{prefix}_poem", {"topic": "NATS"})
        assert poem.structured_content == {"result": "verse on: A poem about NATS"}
        roots = await client.call_tool(f"{prefix}_roots", {})
        assert roots.structured_content == {"result": ["file:///work/project"]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def http_server(script: str) -> Iterator[str]:
    """A test server of tests/servers/ over Streamable HTTP on a free loopback port; its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVERS / script), "http", str(port)])
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def spans_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services as they run with no tracer provider: the lanes that stand aside while spans are
    recorded take their calls. (A provider, once installed by test_tracing.py, stays for the process.)"""
    monkeypatch.setattr(telemetry, "recording", lambda: False)


@pytest.fixture
def replicas() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Adapter processes a test starts and kills (-9) at will; whatever still runs is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Service processes a test starts; stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


@dataclass
class Federation:
    """Manager, adapters and an HTTP edge in this process, joined only by a real NATS."""

    nats_url: str
    tg: TaskGroup
    stack: AsyncExitStack
    edge: Edge | None = None
    url: str = ""
    adapters: dict[str, list[Adapter]] = field(default_factory=dict)
    stops: list[anyio.Event] = field(default_factory=list)
    role_url: Callable[[str], str] | None = None
    """NATS URL per role ("manager", "edge", "adapter-<server>"), e.g. per-role users; None: `nats_url`."""

    def url_for(self, role: str) -> str:
        return self.nats_url if self.role_url is None else self.role_url(role)

    async def add_server(self, name: str, server: BackingServer, *, wait: bool = True, **kw: Any) -> Adapter:
        nc = await bus.connect(self.url_for(f"adapter-{name}"), name=f"test-adapter-{name}")
        self.stack.push_async_callback(nc.close)
        adapter = Adapter(nc, name, server, heartbeat_interval=0.5, **kw)
        self.adapters.setdefault(name, []).append(adapter)
        await self.tg.start(adapter.run)
        if wait:
            await self.wait_for_server(name, present=True)
        return adapter

    async def add_http_server(self, name: str, server: BackingServer) -> Adapter:
        """An adapter for an HTTP backing server whose process may still be starting: tried until it connects."""
        with anyio.fail_after(30):
            while True:
                adapter = await self.add_server(name, server, wait=False)
                with anyio.move_on_after(5):
                    await adapter.backend.wait_ready()
                if adapter.backend.catalog is not None:
                    break
        await self.wait_for_server(name, present=True)
        return adapter

    async def add_edge(self) -> str:
        """Another edge replica on the same bus; returns its MCP URL."""
        stop = anyio.Event()
        self.stops.append(stop)

        async def run(*, task_status: anyio.abc.TaskStatus[str]) -> None:
            async with edge_runtime(self.url_for("edge")) as edge:
                sock = bind("127.0.0.1", 0)
                await edge.view.wait_until(lambda table: table.servers.keys() >= self.edge_servers())
                task_status.started(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp")
                await serve_http(edge, sock, stop=stop, anonymous=True)

        url: str = await self.tg.start(run)
        return url

    def edge_servers(self) -> set[str]:
        assert self.edge is not None
        return set(self.edge.view.table.servers)

    async def remove_server(self, name: str) -> None:
        for adapter in self.adapters.pop(name):
            adapter.stop()
        await self.wait_for_server(name, present=False)

    async def wait_for_server(self, name: str, *, present: bool, timeout: float = 20) -> None:
        """Until the edge's catalog has (or lacks) the server: an event-driven condition, bounded."""
        assert self.edge is not None
        with anyio.fail_after(timeout):
            await self.edge.view.wait_until(lambda table: (name in table.servers) == present)


@asynccontextmanager
async def federation(
    nats_url: str,
    *,
    evict_after: float = 2.0,
    manager: bool = True,
    max_body_bytes: int = 1024 * 1024,
    role_url: Callable[[str], str] | None = None,
    **edge_kw: Any,
) -> AsyncIterator[Federation]:
    """`role_url` gives each role its own NATS URL (see Federation.role_url); by default all use `nats_url`.

    `manager=False`: no manager of its own; the test runs the region's managers (the edge waits until
    one has created the buckets)."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        fed = Federation(nats_url, tg, stack, role_url=role_url)
        stop = anyio.Event()
        if manager:
            await tg.start(
                lambda task_status: run_manager(
                    fed.url_for("manager"), evict_after=evict_after, stop=stop, task_status=task_status
                )
            )
        async with edge_runtime(fed.url_for("edge"), **edge_kw) as edge, anyio.create_task_group() as edge_tg:
            fed.edge = edge
            sock = bind("127.0.0.1", 0)
            fed.url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
            edge_tg.start_soon(lambda: serve_http(edge, sock, stop=stop, max_body_bytes=max_body_bytes, anonymous=True))
            try:
                yield fed
            finally:
                for adapters in fed.adapters.values():
                    for adapter in adapters:
                        adapter.stop()
                stop.set()
                for extra in fed.stops:
                    extra.set()
