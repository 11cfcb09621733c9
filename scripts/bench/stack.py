"""The processes a benchmark run starts (nats-server, fedmcp services, backing servers, peer proxies) and
the setups measured on them: how a client reaches each and which OS processes do the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
from fedmcp.shared.natsserver import NatsServer, free_port
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
STATE = ROOT / ".bench"
"""Peer venvs, logs and profiles (self-ignoring: the harness writes `.bench/.gitignore`)."""
PY = sys.executable
DEMO_ARGS = ["-m", "fedmcp.demo_server.server"]
BIG_EVENTS = 256 * 1024 * 1024
"""SSE event cap for the 50 MB read (the SDK client caps one event at 1 MiB by default)."""

ProcFinder = Callable[[], list[psutil.Process]]
RELAY = "relay-floor"
"""The setup of scripts/bench/relay.py: fedmcp's process shape with none of its work."""
KEEPALIVE = 2.0
"""Seconds the harness's HTTP clients keep an idle connection: under the servers' 5 s (uvicorn's default)."""


def state_dir() -> Path:
    STATE.mkdir(exist_ok=True)
    (STATE / ".gitignore").write_text("*\n")
    return STATE


class Service:
    """One child process (own session, so a stop reaches it and its children); output to a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT
            )
        self.proc = psutil.Process(self.popen.pid)
        self.cpuprof: Path | None = None
        """Where the CPU-time profiler writes (scripts/bench/cpuprof.py wraps the process), if it does."""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = self.proc.children(recursive=True)
        except psutil.Error:
            return []
        return children

    def terminate(self) -> None:
        """SIGTERM to its process group: the fedmcp services drain and exit."""
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def wait(self, timeout: float = 15) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def stop(self, timeout: float = 15) -> None:
        self.terminate()
        self.wait(timeout)


def stop_all(services: list[Service]) -> None:
    """Signal all, then wait for each (their drains overlap)."""
    for service in services:
        service.terminate()
    for service in services:
        service.wait()


def fedmcp_cmd(*args: str, cpuprof: Path | None = None, py: str = PY) -> list[str]:
    if cpuprof is not None:
        return [py, str(BENCH / "cpuprof.py"), str(cpuprof), "-m", "fedmcp.cli.main", *args]
    return [py, "-m", "fedmcp.cli.main", *args]


@dataclass
class Setup:
    """One way of reaching the `echo` tool; `roles` names the processes whose CPU is charged to it."""

    name: str
    description: str
    tool: str
    mode: str
    """SDK `Client(mode=...)`: "2026-07-28", "legacy" (handshake, 2025-11-25) or "auto"."""
    url: str | None = None
    stdio: StdioServerParameters | None = None
    roles: dict[str, ProcFinder] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    """The fedmcp services of the setup by role (edge, adapter), for profiling."""
    fedmcp: bool = False
    peer: bool = False
    unavailable: str = ""
    client: Client | None = None
    era: str = ""
    """The protocol version the client ended up speaking."""

    async def connect(self, stack: AsyncExitStack) -> None:
        """One long-lived client session, reused by every measurement of this setup."""
        mode: Any = self.mode
        if self.stdio is not None:
            before = {p.pid for p in psutil.Process().children()}
            client = Client(self.stdio, mode=mode, cache=None)
            await stack.enter_async_context(client)
            spawned = [p for p in psutil.Process().children() if p.pid not in before]
            self.roles["backing server"] = lambda: spawned
        else:
            assert self.url is not None
            # Same client-side pool for every HTTP setup: enough keep-alive connections for c=64, so that
            # no setup pays for connection churn that is an artefact of httpx2's default of 20. Idle ones are
            # dropped before uvicorn's 5 s keep-alive timeout ends them: with both at 5 s, a request could go
            # out on a connection the server was closing (a ReadError that ends the SDK client's session).
            http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(30, read=300),
                limits=httpx2.Limits(max_connections=128, max_keepalive_connections=128, keepalive_expiry=KEEPALIVE),
            )
            stack.push_async_callback(http.aclose)
            client = Client(streamable_http_client(self.url, http_client=http), mode=mode, cache=None)
            await stack.enter_async_context(client)
        self.client = client
        self.era = str(client.protocol_version)


async def wait_for_tool(url: str, tool: str, *, mode: Any = "auto", timeout: float = 60) -> None:
    """Poll until `url` lists `tool` (the processes start independently)."""
    last: BaseException | None = None
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    with anyio.fail_after(10):
                        async with Client(url, mode=mode) as client:
                            if tool in {t.name for t in (await client.list_tools()).tools}:
                                return
                except Exception as exc:  # not listening yet, or the catalog not loaded yet
                    last = exc
                await anyio.sleep(0.25)
    except TimeoutError:
        raise TimeoutError(f"{url} did not list {tool!r} within {timeout}s (last error: {last!r})") from None


def _one(service: Service) -> ProcFinder:
    return lambda: [service.proc]


def _children(service: Service) -> ProcFinder:
    return service.children


def _hops(edge: ProcFinder, adapter: Service, nats: ProcFinder) -> dict[str, ProcFinder]:
    """The roles of a setup of fedmcp's shape: an edge, an adapter with the backing server its child,
    and the nats-server between them."""
    return {"edge": edge, "adapter": _one(adapter), "nats-server": nats, "backing server": _children(adapter)}


def server_json(**server: Any) -> str:
    return json.dumps(server)


class Stack:
    """Everything one run starts; `stop()` ends it all (each child by its own process group)."""

    def __init__(self, work: Path, *, cpuprof: bool = False, baseline: Path | None = None) -> None:
        self.work = work
        self.baseline = baseline
        """A checkout of another revision (with its own .venv): measured as `fedmcp-base` beside `fedmcp`."""
        self.cpuprof = cpuprof
        """Run the main edge and the demo adapter under scripts/bench/cpuprof.py."""
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []
        self.nats: NatsServer | None = None
        self.nats_proc: psutil.Process | None = None
        self.edge_url = ""
        self.edge: Service | None = None
        self._extra_nats: list[NatsServer] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Service:
        service = Service(name, args, self.logs, env)
        self.services.append(service)
        return service

    def start_nats(self) -> str:
        self.nats = NatsServer(self.work / "nats").start()
        assert self.nats.process is not None
        self.nats_proc = psutil.Process(self.nats.process.pid)
        return self.nats.url

    def _baseline(self, checkout: Path) -> Setup:
        """The standard path run by another revision's code, on a bus of its own (same catalog names)."""
        py = str(checkout / ".venv" / "bin" / "python")
        nats = NatsServer(self.work / "nats-base").start()
        self._extra_nats.append(nats)
        assert nats.process is not None
        nats_proc = psutil.Process(nats.process.pid)
        self.spawn("manager-base", fedmcp_cmd("manager", "--nats-url", nats.url, py=py))
        server = server_json(command=py, args=DEMO_ARGS)
        adapter = self.spawn(
            "adapter-base",
            fedmcp_cmd("adapter", "--nats-url", nats.url, "--name", "demo", "--server-json", server, py=py),
        )
        port = free_port()
        edge = self.spawn(
            "edge-base", fedmcp_cmd("edge", "--nats-url", nats.url, "--anonymous", "--port", str(port), py=py)
        )
        return Setup(
            "fedmcp-base",
            f"as fedmcp, run by the code in {checkout}",
            "demo_echo",
            "2026-07-28",
            url=f"http://127.0.0.1:{port}/mcp",
            roles=_hops(_one(edge), adapter, lambda: [nats_proc]),
            fedmcp=True,
        )

    def nats_role(self) -> ProcFinder:
        return lambda: [self.nats_proc] if self.nats_proc is not None else []

    def start_edge(self, name: str, *extra: str, cpuprof: bool = False) -> tuple[Service, str]:
        assert self.nats is not None
        port = free_port()
        out = self.work / f"cpuprof-{name}.txt" if cpuprof else None
        args = fedmcp_cmd("edge", "--nats-url", self.nats.url, "--anonymous", "--port", str(port), *extra, cpuprof=out)
        edge = self.spawn(name, args)
        edge.cpuprof = out
        return edge, f"http://127.0.0.1:{port}/mcp"

    def start_adapter(self, name: str, *, cpuprof: bool = False, **server: Any) -> Service:
        assert self.nats is not None
        args = ["--nats-url", self.nats.url, "--name", name, "--server-json", server_json(**server)]
        out = self.work / f"cpuprof-adapter-{name}.txt" if cpuprof else None
        adapter = self.spawn(f"adapter-{name}", fedmcp_cmd("adapter", *args, cpuprof=out))
        adapter.cpuprof = out
        return adapter

    def stop(self) -> None:
        stop_all(list(reversed(self.services)))
        for nats in [self.nats, *self._extra_nats]:
            if nats is not None:
                nats.stop()

    async def start(self, quick: bool, peers: dict[str, Path | str]) -> list[Setup]:
        """Start every process and return the setups (peers: venv dir, or the reason one is unavailable)."""
        nats_url = self.start_nats()
        http_port = free_port()
        demo_http = self.spawn("demo-http", [PY, *DEMO_ARGS, "http", str(http_port)])
        direct_url = f"http://127.0.0.1:{http_port}/mcp"
        self.spawn("manager", fedmcp_cmd("manager", "--nats-url", nats_url))
        adapter = self.start_adapter("demo", cpuprof=self.cpuprof, command=PY, args=DEMO_ARGS)
        adapter_http = None if quick else self.start_adapter("demohttp", url=direct_url)
        self.edge, self.edge_url = self.start_edge("edge", cpuprof=self.cpuprof)
        edge_role = _one(self.edge)
        setups: list[Setup] = []
        if not quick:
            setups.append(
                Setup(
                    "direct-stdio",
                    "SDK client over stdio to the demo server (2026-07-28)",
                    "echo",
                    "2026-07-28",
                    stdio=StdioServerParameters(command=PY, args=DEMO_ARGS),
                    roles={},
                )
            )
        setups.append(
            Setup(
                "direct-http",
                "SDK client (2026-07-28) -> demo server over Streamable HTTP",
                "echo",
                "2026-07-28",
                url=direct_url,
                roles={"backing server": _one(demo_http)},
            )
        )
        if not quick:
            setups.append(
                Setup(
                    "direct-http-legacy",
                    "SDK client (2025-11-25 handshake) -> demo server over Streamable HTTP",
                    "echo",
                    "legacy",
                    url=direct_url,
                    roles={"backing server": _one(demo_http)},
                )
            )
        fed_roles = _hops(edge_role, adapter, self.nats_role())
        setups.append(
            Setup(
                "fedmcp",
                "SDK client (2026-07-28) -> edge (Streamable HTTP) -> NATS -> adapter -> demo server (stdio)",
                "demo_echo",
                "2026-07-28",
                url=self.edge_url,
                roles=dict(fed_roles),
                services={"edge": self.edge, "adapter": adapter},
                fedmcp=True,
            )
        )
        setups.append(self._relay_floor())
        if self.baseline is not None:
            setups.append(self._baseline(self.baseline))
        if not quick:
            setups.append(
                Setup(
                    "fedmcp-legacy",
                    "as fedmcp, with a handshake-era (2025-11-25) client",
                    "demo_echo",
                    "legacy",
                    url=self.edge_url,
                    roles=dict(fed_roles),
                    services={"edge": self.edge, "adapter": adapter},
                    fedmcp=True,
                )
            )
            assert adapter_http is not None
            setups.append(
                Setup(
                    "fedmcp-httpback",
                    "as fedmcp, the adapter reaching the demo server over Streamable HTTP",
                    "demohttp_echo",
                    "2026-07-28",
                    url=self.edge_url,
                    roles={
                        "edge": edge_role,
                        "adapter": _one(adapter_http),
                        "nats-server": self.nats_role(),
                        "backing server": _one(demo_http),
                    },
                    fedmcp=True,
                )
            )
            for peer, start in (("mcp-proxy", self._mcp_proxy), ("fastmcp-proxy", self._fastmcp)):
                where = peers.get(peer, "not requested")
                if isinstance(where, str):
                    setups.append(Setup(peer, "", "echo", "auto", peer=True, unavailable=where))
                else:
                    setups.append(start(where))
        for setup in setups:
            if setup.url is not None and not setup.unavailable:
                try:
                    await wait_for_tool(setup.url, setup.tool)
                except TimeoutError as exc:
                    setup.unavailable = str(exc)
        return setups

    def _relay_floor(self) -> Setup:
        """The architecture's floor (scripts/bench/relay.py): fedmcp's hops with none of its work."""
        assert self.nats is not None
        port = free_port()
        relay = [PY, str(BENCH / "relay.py")]
        back = self.spawn("relay-back", [*relay, "back", self.nats.url, "--", PY, *DEMO_ARGS])
        front = self.spawn("relay-front", [*relay, "front", str(port), self.nats.url])
        return Setup(
            RELAY,
            "SDK client (2026-07-28) -> thinnest HTTP-to-NATS relay -> NATS -> relay to stdio -> demo server",
            "echo",
            "2026-07-28",
            url=f"http://127.0.0.1:{port}/mcp",
            roles=_hops(_one(front), back, self.nats_role()),
        )

    def _mcp_proxy(self, venv: Path) -> Setup:
        port = free_port()
        proxy = self.spawn(
            "mcp-proxy",
            [str(venv / "bin" / "mcp-proxy"), "--port", str(port), "--host", "127.0.0.1", "--", PY, *DEMO_ARGS],
        )
        return Setup(
            "mcp-proxy",
            "SDK client (auto era) -> mcp-proxy (PyPI, Streamable HTTP) -> demo server (stdio)",
            "echo",
            "auto",
            url=f"http://127.0.0.1:{port}/mcp",
            roles={"proxy": _one(proxy), "backing server": _children(proxy)},
            peer=True,
        )

    def _fastmcp(self, venv: Path) -> Setup:
        port = free_port()
        proxy = self.spawn(
            "fastmcp-proxy",
            [str(venv / "bin" / "python"), str(BENCH / "peer_fastmcp.py"), str(port), PY, *DEMO_ARGS],
            env={**os.environ, "FASTMCP_SHOW_SERVER_BANNER": "false", "FASTMCP_CHECK_FOR_UPDATES": "off"},
        )
        return Setup(
            "fastmcp-proxy",
            "SDK client (auto era) -> FastMCP create_proxy (PyPI fastmcp, Streamable HTTP) -> demo server (stdio)",
            "echo",
            "auto",
            url=f"http://127.0.0.1:{port}/mcp",
            roles={"proxy": _one(proxy), "backing server": _children(proxy)},
            peer=True,
        )


PEERS = {"mcp-proxy": ["mcp-proxy"], "fastmcp-proxy": ["fastmcp"]}


def ensure_venvs(names: list[str], timeout: float = 300) -> dict[str, Path | str]:
    """A venv per peer under .bench/venvs, made with uv; a peer that cannot be installed maps to the reason."""
    out: dict[str, Path | str] = {}
    for name in names:
        venv = state_dir() / "venvs" / name
        marker = venv / ".bench-installed"
        if marker.exists():
            out[name] = venv
            continue
        log = state_dir() / f"install-{name}.log"
        try:
            with log.open("wb") as sink:
                if not (venv / "bin" / "python").exists():
                    subprocess.run(["uv", "venv", "-q", "-p", "3.11", str(venv)], check=True, stdout=sink, stderr=sink)
                subprocess.run(
                    ["uv", "pip", "install", "-q", "-p", str(venv / "bin" / "python"), *PEERS[name]],
                    check=True,
                    stdout=sink,
                    stderr=sink,
                    timeout=timeout,
                )
            marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
            out[name] = venv
        except (subprocess.SubprocessError, OSError) as exc:
            out[name] = f"could not install {' '.join(PEERS[name])} ({exc}; see {log})"
    return out


def peer_version(venv: Path, dist: str) -> str:
    try:
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "?"


def tools_venv(package: str) -> Path | None:
    """A venv with a tool (py-spy) under .bench/venvs/tools; None if it cannot be installed."""
    venv = state_dir() / "venvs" / "tools"
    exe = venv / "bin" / package
    if exe.exists():
        return exe
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run(["uv", "venv", "-q", "-p", "3.11", str(venv)], check=True, capture_output=True)
        subprocess.run(
            ["uv", "pip", "install", "-q", "-p", str(venv / "bin" / "python"), package],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return exe if exe.exists() else None
