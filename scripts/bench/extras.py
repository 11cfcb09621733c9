"""The one-off measurements: list_changed after an adapter joins, an edge holding 10,000 idle
handshake-era sessions, and a 50 MB resource read through fedmcp."""

from __future__ import annotations

import base64
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
import nats
import psutil
from fedmcp.edge.http import LOCAL_IDLE
from fedmcp.shared.natsserver import free_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from scripts.bench.load import pct
from scripts.bench.stack import BENCH, BIG_EVENTS, DEMO_ARGS, KEEPALIVE, PY, Service, Stack, stop_all, wait_for_tool

LEGACY = "2025-11-25"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
BIG_SIZE = 37_500_000
"""Raw bytes of the big resource: 50,000,000 bytes once base64-encoded in the JSON-RPC result."""
BIG_WIRE = (BIG_SIZE + 2) // 3 * 4
BIG_TIMEOUT = 300


@dataclass
class BigRead:
    """Reads of the 50 MB resource one way; RSS of the edge (and adapter) that carried them."""

    name: str
    description: str
    seconds: list[float] = field(default_factory=list)
    ok: bool = False
    edge_before: int = 0
    edge_peak: int = 0
    edge_after: int = 0
    adapter_peak_growth: int = 0
    error: str = ""

    @property
    def edge_growth(self) -> int:
        return self.edge_peak - self.edge_before


@dataclass
class Extras:
    join_ms: list[float] = field(default_factory=list)
    join_misses: int = 0
    sessions_wanted: int = 0
    sessions_opened: int = 0
    sessions_alive: str = ""
    sessions_seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    rss_idle: int = 0
    """After the sessions have been idle past the edge's local idle timeout (fedmcp.edge.http.LOCAL_IDLE)."""
    big: list[BigRead] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def join_p50(self) -> float:
        return statistics.median(self.join_ms) if self.join_ms else float("nan")

    def join_p99(self) -> float:
        return pct(self.join_ms, 0.99)


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


class PeakRss:
    """Samples one process's RSS every few milliseconds in a thread (the event loop is busy meanwhile)."""

    def __init__(self, proc: psutil.Process, every: float = 0.005) -> None:
        self.proc, self.every, self.peak = proc, every, rss(proc)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.peak = max(self.peak, rss(self.proc))
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss(self.proc))


async def list_changed_after_join(stack: Stack, joins: int, out: Extras) -> None:
    """A handshake-era client on the edge; `joins` adapter processes for new servers (join00, join01, ...)
    start one after the other and stay. Measured: from the adapter's announcement on the bus (the moment
    it has joined) to the client's notifications/tools/list_changed, confirmed by the new tools in the
    listing. New names each time: a server that left and came back with the same catalog changes no
    list (the edge keeps a departed server's catalog for a while), and removals would interleave."""
    assert stack.nats is not None
    changes: list[float] = []
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changes.append(time.perf_counter())
            changed.set()

    announced: dict[str, float] = {}
    announcement = anyio.Event()
    nc = await nats.connect(stack.nats.url, name="bench-join-watch")
    adapters: list[Service] = []
    try:

        async def on_announce(msg: Any) -> None:
            server = msg.subject.split(".")[-2]
            announced.setdefault(server, time.perf_counter())
            announcement.set()

        await nc.subscribe("fedmcp.evt.announce.*.*", cb=on_announce)
        await nc.flush()
        # The client's lifetime sits inside one deadline for the whole phase (a cancel scope cannot
        # close around an open session's task group); each wait inside has its own.
        with anyio.fail_after(60 + 40 * joins):
            async with Client(stack.edge_url, mode="legacy", message_handler=on_message) as client:
                with anyio.fail_after(30):
                    await client.list_tools()
                await anyio.sleep(1)
                for i in range(joins):
                    name = f"join{i:02d}"
                    changes.clear()
                    changed = anyio.Event()
                    adapters.append(stack.start_adapter(name, command=PY, args=DEMO_ARGS))
                    with anyio.fail_after(30):
                        while name not in announced:
                            await announcement.wait()
                            announcement = anyio.Event()
                    joined = announced[name]
                    seen = 0
                    found: float | None = None
                    with anyio.move_on_after(10):
                        while found is None:
                            while len(changes) <= seen:
                                await changed.wait()
                                changed = anyio.Event()
                            at, seen = changes[seen], seen + 1
                            with anyio.fail_after(10):
                                tools = {t.name for t in (await client.list_tools()).tools}
                            if f"{name}_echo" in tools and at >= joined:
                                found = at
                    if found is None:
                        out.join_misses += 1
                    else:
                        out.join_ms.append((found - joined) * 1000)
                    await anyio.sleep(0.2)
    finally:
        await nc.close()
        for adapter in adapters:
            stack.services.remove(adapter)
        await anyio.to_thread.run_sync(stop_all, adapters)


async def idle_sessions(stack: Stack, count: int, out: Extras) -> None:
    """A fresh edge; `count` handshake-era sessions opened with raw initialize + notifications/initialized
    POSTs and kept (never deleted); the edge's RSS before and after."""
    edge, url = stack.start_edge("edge-sessions")
    await wait_for_tool(url, "demo_echo")
    await anyio.sleep(1)
    out.sessions_wanted = count
    out.rss_before = rss(edge.proc)
    sessions: list[str] = []
    failures: list[str] = []
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
    }
    done_note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    limits = httpx2.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=KEEPALIVE)
    t0 = time.perf_counter()
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30), limits=limits) as http:
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                next_index += 1
                try:
                    with anyio.fail_after(30):
                        response = await http.post(url, json=init, headers=ACCEPT)
                        response.raise_for_status()
                        session = response.headers["mcp-session-id"]
                        hdrs = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY}
                        note = await http.post(url, json=done_note, headers=hdrs)
                        if note.status_code != 202:
                            raise RuntimeError(f"notifications/initialized: HTTP {note.status_code}")
                        sessions.append(session)
                except Exception as exc:
                    failures.append(repr(exc)[:200])

        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(worker)
        out.sessions_seconds = time.perf_counter() - t0
        out.sessions_opened = len(sessions)
        await anyio.sleep(3)  # let the edge settle
        out.rss_after = rss(edge.proc)
        # Idle: past the edge's local idle timeout its copies go; the sessions live on as records.
        await anyio.sleep(LOCAL_IDLE + 5)
        out.rss_idle = rss(edge.proc)
        # Still held? Ping a sample of the sessions.
        sample = sessions[:: max(1, len(sessions) // 50)]
        alive = 0
        for session in sample:
            hdrs = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY}
            try:
                with anyio.fail_after(10):
                    ping = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=hdrs)
                alive += ping.status_code == 200
            except Exception:
                pass
        out.sessions_alive = f"{alive}/{len(sample)}"
    if failures:
        out.notes.append(f"idle sessions: {len(failures)} failed to open, e.g. {failures[0]}")
    await anyio.to_thread.run_sync(edge.stop)


async def big_read(stack: Stack, reads: int, out: Extras) -> None:
    """`reads` reads of a 50 MB (base64) blob three ways: straight from the bench big server over HTTP,
    through fedmcp with the big server on stdio (the standard path), and through fedmcp with the
    adapter reaching it over HTTP. Each fedmcp way has a fresh edge whose RSS is sampled throughout."""
    expected = base64.b64encode(await anyio.to_thread.run_sync(_blob, BIG_SIZE)).decode()
    port = free_port()
    stack.spawn("big-http", [PY, str(BENCH / "big_server.py"), "http", str(port)])
    big_url = f"http://127.0.0.1:{port}/mcp"
    adapter_stdio = stack.start_adapter("big", command=PY, args=[str(BENCH / "big_server.py")])
    adapter_http = stack.start_adapter("bighttp", url=big_url)
    # A generous request timeout: the read is slow on the stdio path (see docs/benchmarks.md).
    edge_stdio, url_stdio = stack.start_edge("edge-big-stdio", "--request-timeout", str(BIG_TIMEOUT))
    edge_http, url_http = stack.start_edge("edge-big-http", "--request-timeout", str(BIG_TIMEOUT))
    ways: list[tuple[BigRead, str, str, Service | None, Service | None]] = [
        (BigRead("direct-http", "SDK client -> big server over Streamable HTTP"), big_url, "bighttp", None, None),
        (
            BigRead("fedmcp", "SDK client -> edge -> NATS -> adapter -> big server over stdio"),
            url_stdio,
            "big",
            edge_stdio,
            adapter_stdio,
        ),
        (
            BigRead("fedmcp-httpback", "SDK client -> edge -> NATS -> adapter -> big server over HTTP"),
            url_http,
            "bighttp",
            edge_http,
            adapter_http,
        ),
    ]
    await wait_for_tool(big_url, "ping")
    await wait_for_tool(url_stdio, "big_ping")
    await wait_for_tool(url_http, "bighttp_ping")
    for way, url, scheme, edge, adapter in ways:
        out.big.append(way)
        try:
            await _read_big(way, url, scheme, edge, adapter, reads, expected)
        except Exception as exc:
            way.error = repr(exc)[:300]
    await anyio.to_thread.run_sync(stop_all, [edge_stdio, edge_http])


async def _read_big(
    way: BigRead, url: str, scheme: str, edge: Service | None, adapter: Service | None, reads: int, expected: str
) -> None:
    uri = f"{scheme}://blob/{BIG_SIZE}"
    transport = streamable_http_client(url, max_sse_event_size=BIG_EVENTS)
    with anyio.fail_after(60 + (BIG_TIMEOUT + 10) * reads):
        async with Client(transport, mode="2026-07-28", cache=None) as client:
            # Warm: a small read first (code paths loaded, off the clock).
            with anyio.fail_after(30):
                await client.read_resource(f"{scheme}://blob/1000")
            await anyio.sleep(1)
            # Direct reads have no edge: the RSS sampled is then the bench server's.
            watched = [edge.proc if edge is not None else None, adapter.proc if adapter is not None else None]
            before = [rss(p) if p is not None else 0 for p in watched]
            with contextlib.ExitStack() as sampling:
                peaks = [sampling.enter_context(PeakRss(p)) if p is not None else None for p in watched]
                for _ in range(reads):
                    t0 = time.perf_counter()
                    with anyio.fail_after(BIG_TIMEOUT + 10):
                        read = await client.read_resource(uri)
                    way.seconds.append(time.perf_counter() - t0)
                    contents = read.contents[0]
                    way.ok = isinstance(contents, types.BlobResourceContents) and contents.blob == expected
                    del read, contents
            edge_peak, adapter_peak = peaks
            if edge_peak is not None and watched[0] is not None:
                way.edge_before, way.edge_peak = before[0], edge_peak.peak
                await anyio.sleep(2)
                way.edge_after = rss(watched[0])
            if adapter_peak is not None:
                way.adapter_peak_growth = adapter_peak.peak - before[1]


def _blob(size: int) -> bytes:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_big_server", BENCH / "big_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data: bytes = module.blob(size)
    return data
