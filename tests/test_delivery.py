"""Delivery semantics with real adapter processes: a lost instance, busy replicas, no double runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from conftest import federation, python_server
from fedmcp.cli.inspect import read_state
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio


@pytest.fixture
def replicas() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def start_adapter(nats_url: str, ledger: Path, log: Path) -> subprocess.Popen[bytes]:
    server = msgspec.json.encode(python_server("ledger.py", env={"LEDGER": str(ledger)})).decode()
    args = [sys.executable, "-m", "fedmcp.adapter.main", "--nats-url", nats_url, "--name", "ledger"]
    with log.open("wb") as out:
        return subprocess.Popen([*args, "--heartbeat", "0.5", "--server-json", server], stdout=out, stderr=out)


async def registered(nats_url: str, server: str, count: int) -> None:
    """Until the registry lists `count` instances of `server`."""
    with anyio.fail_after(20):
        while True:
            _, instances = await read_state(nats_url, "fedmcp")
            if sum(1 for i in instances if i.server == server) >= count:
                return
            await anyio.sleep(0.1)


async def runs(ledger: Path, expected: int) -> list[tuple[str, int]]:
    """The ledger's lines once it has `expected` of them (the backing server writes them)."""
    with anyio.fail_after(10):
        while True:
            path = anyio.Path(ledger)
            lines = (await path.read_text()).splitlines() if await path.exists() else []
            if len(lines) >= expected:
                return [(tool, int(pid)) for tool, pid in (line.split() for line in lines)]
            await anyio.sleep(0.02)


@pytest.mark.parametrize(("tool", "idempotent"), [("ledger_transfer", False), ("ledger_balance", True)])
async def test_kill_9_of_the_replica_holding_a_call(
    nats_server: NatsServer, replicas: list[subprocess.Popen[bytes]], tmp_path: Path, tool: str, idempotent: bool
) -> None:
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url) as fed:
        replicas.extend(start_adapter(nats_server.url, ledger, tmp_path / f"adapter{i}.log") for i in range(2))
        await fed.wait_for_server("ledger", present=True)
        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            outcome: list[object] = []

            async def call() -> None:
                try:
                    outcome.append((await client.call_tool(tool, {"seconds": 2.0})).structured_content)
                except MCPError as exc:
                    outcome.append(exc.error.code)

            tg.start_soon(call)
            ((_, holder),) = await runs(ledger, 1)
            os.kill(holder, signal.SIGKILL)  # the adapter that took the call dies mid-call
        if idempotent:
            assert outcome == [{"result": "42"}]
            ran = await runs(ledger, 2)
            assert [t for t, _ in ran] == ["balance", "balance"] and ran[1][1] != holder  # failed over
        else:
            assert outcome == [jsonrpc.UPSTREAM_LOST]
            assert [t for t, _ in await runs(ledger, 1)] == ["transfer"]  # never run twice


async def test_busy_replicas_give_an_overload_error_after_a_bounded_wait(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url, overload_wait=0.5) as fed:
        adapter = await fed.add_server("ledger", python_server("ledger.py", env={"LEDGER": str(ledger)}))
        adapter.max_concurrency = 1
        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.call_tool("ledger_transfer", {"seconds": 3.0}))
            await runs(ledger, 1)
            with pytest.raises(MCPError) as err:
                await client.call_tool("ledger_balance", {"seconds": 0})
            assert err.value.error.code == jsonrpc.OVERLOADED
            tg.cancel_scope.cancel()
        assert [t for t, _ in await runs(ledger, 1)] == ["transfer"]


async def test_rolling_restart_of_every_adapter_under_load_fails_no_call(
    nats_server: NatsServer, replicas: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url) as fed:
        replicas.extend(start_adapter(nats_server.url, ledger, tmp_path / f"adapter{i}.log") for i in range(2))
        await fed.wait_for_server("ledger", present=True)
        failures: list[object] = []
        done = 0
        target = 0
        reached = anyio.Event()
        stop = anyio.Event()

        async def load(client: Client, tool: str) -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    await client.call_tool(tool, {"seconds": 0.05})
                    done += 1
                    if done >= target:
                        reached.set()
                except MCPError as exc:
                    failures.append((tool, exc.error.code, exc.error.message))

        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            for tool in ("ledger_transfer", "ledger_balance", "ledger_transfer", "ledger_balance"):
                tg.start_soon(load, client, tool)
            for i in range(2):  # replace each replica in turn: SIGTERM drains it
                old = replicas[i]
                old.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(old.wait, 30)
                assert old.returncode == 0
                replicas[i] = start_adapter(nats_server.url, ledger, tmp_path / f"adapter{i}-new.log")
                await registered(nats_server.url, "ledger", 2)  # as an operator waits for readiness
                target, reached = done + 20, anyio.Event()  # calls keep completing, on the new replica too
                with anyio.fail_after(30):
                    await reached.wait()
            stop.set()
        assert failures == [], failures[:3]
        assert done > 40


async def test_load_spreads_evenly_across_three_replicas(nats_server: NatsServer, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url) as fed:
        server = python_server("ledger.py", env={"LEDGER": str(ledger)})
        replicas = [await fed.add_server("ledger", server) for _ in range(3)]
        calls = 900
        async with Client(fed.url) as client, anyio.create_task_group() as tg:

            async def worker(n: int) -> None:
                for _ in range(n):
                    await client.call_tool("ledger_balance", {"seconds": 0})

            for _ in range(9):
                tg.start_soon(worker, calls // 9)
        served = [r.served for r in replicas]
        assert sum(served) == calls
        # NATS picks a queue member at random: 300 +/- 15% is more than 3 standard deviations.
        assert all(abs(s - calls / 3) <= 0.15 * calls / 3 for s in served), served
