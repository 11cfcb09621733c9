"""Quick benchmark (under a minute): the SDK client calling `echo` directly and through fedmcp.

Setups, interleaved so machine drift hits them alike:
  direct-http   SDK client -> demo server over Streamable HTTP (2026-07-28)
  fedmcp        SDK client (2026-07-28) -> edge (HTTP) -> NATS -> adapter -> demo server (stdio)
Reports p50/p99 at concurrency 1 and calls/s at 16. Timings on shared machines are noisy:
this is for before/after comparisons of the hot path, never a CI gate.

    uv run python scripts/bench/quick.py [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from fedmcp.shared.natsserver import NatsServer, free_port
from mcp import Client

ROOT = Path(__file__).resolve().parents[2]


async def wait_ready(url: str, tool: str) -> None:
    with anyio.fail_after(30):
        while True:
            try:
                async with Client(url) as client:
                    if tool in {t.name for t in (await client.list_tools()).tools}:
                        return
            except Exception:  # not listening yet
                pass
            await anyio.sleep(0.2)


async def latency(url: str, tool: str, calls: int) -> list[float]:
    samples: list[float] = []
    async with Client(url, mode="2026-07-28", cache=None) as client:
        await client.list_tools()
        for _ in range(calls):
            t0 = time.perf_counter()
            await client.call_tool(tool, {"text": "hello"})
            samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def throughput(url: str, tool: str, calls: int, concurrency: int) -> float:
    async with Client(url, mode="2026-07-28", cache=None) as client:
        await client.list_tools()
        remaining = calls
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.call_tool(tool, {"text": "hello"})

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        return calls / (time.perf_counter() - t0)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(setups: dict[str, tuple[str, str]], calls: int) -> None:
    for url, tool in setups.values():
        await wait_ready(url, tool)
    results: dict[str, dict[str, list[float]]] = {name: {"lat": [], "tput": []} for name in setups}
    for _ in range(3):  # interleaved rounds
        for name, (url, tool) in setups.items():
            results[name]["lat"] += await latency(url, tool, calls // 3)
            results[name]["tput"].append(await throughput(url, tool, calls, 16))
    print(f"{'setup':<12} {'p50 ms':>8} {'p99 ms':>8} {'calls/s @16':>12}")
    for name, r in results.items():
        print(
            f"{name:<12} {statistics.median(r['lat']):>8.2f} {pct(r['lat'], 0.99):>8.2f} "
            f"{statistics.median(r['tput']):>12.0f}"
        )


def main(calls: int) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fedmcp-bench-"))
    nats = NatsServer(tmp / "nats").start()
    try:
        http_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "fedmcp.demo_server.server", "http", str(http_port)]))
        edge_port = free_port()
        (tmp / "fedmcp.toml").write_text(
            f'data_dir = "{tmp}/data"\n[edge]\nport = {edge_port}\n[servers.demo]\ncommand = "{sys.executable}"\n'
            'args = ["-m", "fedmcp.demo_server.server"]\n'
        )
        with (tmp / "up.log").open("wb") as log:
            up = [sys.executable, "-m", "fedmcp.cli.main", "up", "--config", str(tmp / "fedmcp.toml")]
            procs.append(subprocess.Popen([*up, "--nats-url", nats.url], stdout=log, stderr=log))
        setups = {
            "direct-http": (f"http://127.0.0.1:{http_port}/mcp", "echo"),
            "fedmcp": (f"http://127.0.0.1:{edge_port}/mcp", "demo_echo"),
        }
        anyio.run(measure, setups, calls)
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        nats.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    main(ap.parse_args().calls)
