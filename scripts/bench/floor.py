"""The frameworks' floor: what the edge's HTTP server and the adapter's bus client cost on their own.

Two stand-ins, each doing only what its framework must for one call, measured at c=16 like the
setups:
- *http*: the edge's HTTP stack (uvicorn with httptools on uvloop, through fedmcp.shared.ops_http,
  as the edge serves) answering every POST with a canned `tools/call` result of the echo's size;
- *bus*: a nats-py responder (fedmcp.shared.bus, as the adapter connects) answering every request
  with a canned result carrying the adapter's reply headers, through the same nats-server.

CPU per call of these is the part of the edge's (and the adapter's) that no fedmcp code adds, so the
rest is what fedmcp's own code costs.

    python scripts/bench/floor.py http PORT | python scripts/bench/floor.py bus NATS_URL
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `scripts.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import anyio
import httpx2
import psutil
from fedmcp.shared import bus, headers, runner
from fedmcp.shared.natsserver import free_port
from fedmcp.shared.ops_http import bind, serve_asgi
from starlette.types import Receive, Scope, Send

from scripts.bench.load import cpu_of
from scripts.bench.stack import KEEPALIVE, PY, Stack

SCRIPT = str(Path(__file__).resolve())

SUBJECT = "floor.echo"
RESULT = (
    b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"text":"hello","type":"text"}],"isError":false,'
    b'"resultType":"complete","structuredContent":{"result":"hello"},'
    b'"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"fedmcp","version":"0.1.0"}}}}'
)
REQUEST = (
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"demo_echo","arguments":{"text":"hello"},'
    b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    b'"io.modelcontextprotocol/clientCapabilities":{}}}}'
)
HTTP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "Mcp-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "demo_echo",
}
CONCURRENCIES = (1, 16)
"""Serial (every message its own wakeup and syscalls, as on a lightly loaded path) and c=16 (where
both nats-py and nats-server coalesce writes of messages queued together)."""


async def lifespan(receive: Receive, send: Send) -> None:
    """A stand-in's whole ASGI lifespan: nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def canned(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    length = str(len(RESULT)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
        }
    )
    await send({"type": "http.response.body", "body": RESULT})


async def serve_http(port: int) -> None:
    await serve_asgi(canned, bind("127.0.0.1", port), stop=anyio.Event())


async def serve_bus(url: str) -> None:
    nc = await bus.connect(url, name="adapter-floor")
    reply_headers = headers.base({headers.KIND: headers.Kind.RESULT, headers.INSTANCE: "floor"})

    async def answer(msg: object) -> None:
        await nc.publish(msg.reply, RESULT, headers=reply_headers)  # type: ignore[attr-defined]

    await nc.subscribe(SUBJECT, queue="floor", cb=answer)
    await anyio.Event().wait()


@dataclass
class Cost:
    """One stand-in at one concurrency: CPU ms per call of each process charged, and calls/s."""

    cpu_ms: list[float] = field(default_factory=list)
    rate: float = float("nan")


@dataclass
class Floor:
    http: dict[int, Cost] = field(default_factory=dict)
    """By concurrency: the HTTP server's CPU per request."""
    bus: dict[int, Cost] = field(default_factory=dict)
    """By concurrency: the responder's and nats-server's CPU per call."""
    notes: list[str] = field(default_factory=list)


async def _load(calls: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    """`calls` calls of `one()` by `concurrency` workers; calls per second."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return calls / (time.perf_counter() - t0)


async def _charged(procs: list[psutil.Process], calls: int, one: Callable[[], Awaitable[None]]) -> dict[int, Cost]:
    await _load(min(300, calls), 16, one)  # warm-up
    costs = {}
    for concurrency in CONCURRENCIES:
        before = [cpu_of([p]) for p in procs]
        rate = await _load(calls, concurrency, one)
        cpu = [(cpu_of([p]) - b) / calls * 1000 for p, b in zip(procs, before, strict=True)]
        costs[concurrency] = Cost(cpu, rate)
    return costs


async def measure(stack: Stack, calls: int, out: Floor) -> None:
    """Start both stand-ins beside the stack's nats-server and measure them."""
    assert stack.nats is not None and stack.nats_proc is not None
    port = free_port()
    http_service = stack.spawn("floor-http", [PY, SCRIPT, "http", str(port)])
    bus_service = stack.spawn("floor-bus", [PY, SCRIPT, "bus", stack.nats.url])
    url = f"http://127.0.0.1:{port}/mcp"
    async with httpx2.AsyncClient(
        timeout=30, limits=httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE)
    ) as http:
        with anyio.fail_after(30):
            while True:
                try:
                    await http.post(url, content=REQUEST, headers=HTTP_HEADERS)
                    break
                except httpx2.TransportError:
                    await anyio.sleep(0.1)

        async def post() -> None:
            response = await http.post(url, content=REQUEST, headers=HTTP_HEADERS)
            if response.status_code != 200:
                raise RuntimeError(f"floor http answered {response.status_code}")

        out.http = await _charged([http_service.proc], calls, post)
    nc = await bus.connect(stack.nats.url, name="floor-requester")
    try:
        request_headers = headers.base({headers.DEADLINE: headers.deadline_in(30), headers.IDEMPOTENT: "1"})
        with anyio.fail_after(30):
            while True:
                try:
                    await nc.request(SUBJECT, REQUEST, timeout=1, headers=request_headers)
                    break
                except Exception:  # no responder yet
                    await anyio.sleep(0.1)

        async def request() -> None:
            await nc.request(SUBJECT, REQUEST, timeout=10, headers=request_headers)

        procs = [bus_service.proc, stack.nats_proc]
        out.bus = await _charged(procs, calls, request)
    finally:
        await nc.close()


if __name__ == "__main__":
    role, where = sys.argv[1], sys.argv[2]
    if role == "http":
        runner.run(lambda: serve_http(int(where)))
    else:
        runner.run(lambda: serve_bus(where))
