"""Delivery semantics with real adapter processes: a lost instance, busy replicas, no double runs."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import msgspec
import pytest
from conftest import federation, python_server
from fedmcp.cli.inspect import read_state
from fedmcp.shared import bus, headers, jsonrpc
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.subjects import Subjects
from mcp import Client
from mcp.shared.exceptions import MCPError
from nats.aio.msg import Msg

pytestmark = pytest.mark.anyio


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
                return [(tool, int(pid)) for tool, pid, *_ in (line.split() for line in lines)]
            await anyio.sleep(0.02)


async def entries(ledger: Path) -> list[tuple[str, int, str]]:
    """Every ledger line as (tool, adapter pid, id); the id is "" for a call without one."""
    path = anyio.Path(ledger)
    lines = (await path.read_text()).splitlines() if await path.exists() else []
    return [(tool, int(pid), rest[0] if rest else "") for tool, pid, *rest in (line.split() for line in lines)]


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


async def test_kill_9_of_one_of_three_replicas_under_mixed_load(
    nats_server: NatsServer, replicas: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url) as fed:
        replicas.extend(start_adapter(nats_server.url, ledger, tmp_path / f"adapter{i}.log") for i in range(3))
        await registered(nats_server.url, "ledger", 3)
        await fed.wait_for_server("ledger", present=True)
        # Each transfer carries its own id, which the ledger records when (and where) it runs.
        pending: set[str] = set()  # sent, outcome not seen yet
        moved: set[str] = set()  # the client saw it succeed
        failed: dict[str, object] = {}  # did not succeed: id -> error code (or the unexpected result)
        balances = 0
        balance_failures: list[object] = []
        stop = anyio.Event()
        progress = anyio.Event()

        def completed() -> None:
            nonlocal progress
            progress.set()
            progress = anyio.Event()

        async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
            """Until `condition` holds, checked after every completed call."""
            with anyio.fail_after(timeout):
                while not await condition():
                    await progress.wait()

        async def transfers(client: Client, loop: int) -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                tid = f"{loop}.{n}"
                pending.add(tid)
                try:
                    result = await client.call_tool("ledger_transfer", {"seconds": 1.0, "id": tid})
                    if result.structured_content == {"result": "moved"}:
                        moved.add(tid)
                    else:
                        failed[tid] = result
                except MCPError as exc:
                    failed[tid] = exc.error.code
                pending.discard(tid)
                completed()

        async def balance(client: Client) -> None:
            nonlocal balances
            while not stop.is_set():
                try:
                    result = await client.call_tool("ledger_balance", {"seconds": 0.02})
                    if result.structured_content == {"result": "42"}:
                        balances += 1
                    else:
                        balance_failures.append(result)
                except MCPError as exc:
                    balance_failures.append((exc.error.code, exc.error.message))
                completed()

        async def warm() -> bool:
            ran_transfers = {pid for tool, pid, _ in await entries(ledger) if tool == "transfer"}
            return ran_transfers == {p.pid for p in replicas} and balances >= 20

        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            for loop in range(4):
                tg.start_soon(transfers, client, loop)
                tg.start_soon(balance, client)
            await until(warm)  # every replica is running transfers
            seen = len(await entries(ledger))
            with anyio.fail_after(10):  # a transfer shows in the ledger when it starts: poll for one that just did
                while True:
                    new = (await entries(ledger))[seen:]
                    started = [pid for tool, pid, tid in new if tool == "transfer" and tid in pending]
                    if started:
                        break
                    seen += len(new)
                    await anyio.sleep(0.01)
            victim = started[-1]  # its transfer has most of its second to run
            os.kill(victim, signal.SIGKILL)
            in_flight, moved_before, balances_before = set(pending), len(moved), balances

            async def recovered() -> bool:
                return not in_flight & pending and len(moved) >= moved_before + 8 and balances >= balances_before + 40

            await until(recovered)  # every call in flight at the kill has ended, and calls keep completing
            stop.set()
        (killed,) = [p for p in replicas if p.pid == victim]
        assert killed.wait(10) == -signal.SIGKILL
        assert pending == set()
        ran = [(pid, tid) for tool, pid, tid in await entries(ledger) if tool == "transfer"]
        runs_of = Counter(tid for _, tid in ran)
        ran_on = {tid: pid for pid, tid in ran}
        assert [tid for tid, n in runs_of.items() if n > 1] == []  # no transfer ran twice
        assert [tid for tid in moved if runs_of[tid] != 1] == []  # every success ran exactly once
        assert {tid: code for tid, code in failed.items() if code != jsonrpc.UPSTREAM_LOST} == {}
        assert {tid: ran_on.get(tid) for tid in failed if ran_on.get(tid) != victim} == {}, (victim, failed)
        lost_on_victim = {tid for tid, pid in ran_on.items() if pid == victim and tid not in moved}
        assert len(failed) == len(lost_on_victim) >= 1
        assert set(failed) == lost_on_victim
        assert balance_failures == [], balance_failures[:3]
        assert balances >= 60


async def test_a_call_that_ends_as_the_edge_probes_its_adapter_is_not_reported_lost(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # The adapter answers "not held" as soon as it has sent the result; the result can still be
    # queued at the edge then. Probing every 10 ms makes that moment frequent.
    ledger = tmp_path / "ledger.txt"
    async with federation(nats_server.url) as fed:
        await fed.add_server("ledger", python_server("ledger.py", env={"LEDGER": str(ledger)}))
        assert fed.edge is not None
        fed.edge.upstream.probe_after = 0.01
        not_held = 0

        async def on_answer(msg: Msg) -> None:
            nonlocal not_held
            not_held += msg.data == b"0"

        watcher = await bus.connect(nats_server.url, name="test-watcher")
        try:
            await watcher.subscribe("_INBOX.>", cb=on_answer)  # the edge's ping answers land in its inboxes
            await watcher.flush()
            outcomes: list[object] = []
            async with Client(fed.url) as client, anyio.create_task_group() as tg:

                async def transfer(tid: str) -> None:
                    try:
                        result = await client.call_tool("ledger_transfer", {"seconds": 0.2, "id": tid})
                        outcomes.append(result.structured_content)
                    except MCPError as exc:
                        outcomes.append(exc.error.code)

                for i in range(40):
                    tg.start_soon(transfer, str(i))
        finally:
            await watcher.close()
        assert outcomes == [{"result": "moved"}] * 40
        assert sorted(tid for _, _, tid in await entries(ledger)) == sorted(str(i) for i in range(40))
        assert not_held >= 1  # the race was there to lose


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


async def frames_of(nats_url: str, tool: str, arguments: dict[str, object], *, idempotent: bool) -> list[str]:
    """The kinds of the frames an adapter sends back for one request published straight onto the bus."""
    nc = await bus.connect(nats_url, name="test-frames")
    try:
        inbox = nc.new_inbox()
        got: list[str] = []
        done = anyio.Event()

        async def on_frame(msg: Msg) -> None:
            got.append((msg.headers or {}).get(headers.KIND, ""))
            if got[-1] == headers.Kind.RESULT:
                done.set()

        await nc.subscribe(inbox, cb=on_frame)
        hdrs = headers.base(
            {
                headers.DEADLINE: headers.deadline_in(10),
                headers.ACCEPT_BY: headers.deadline_in(2),
                headers.FRONT_VERSION: "2026-07-28",
                headers.CLIENT_CAPABILITIES: "{}",
            }
        )
        if idempotent:
            hdrs[headers.IDEMPOTENT] = "1"
        payload = jsonrpc.encode_request("tools/call", {"name": tool, "arguments": arguments}, 1)
        await nc.publish(Subjects().rpc("ledger"), payload, reply=inbox, headers=hdrs)
        with anyio.fail_after(10):
            await done.wait()
        return got
    finally:
        await nc.close()


async def test_a_quick_idempotent_call_is_answered_by_its_result_alone(nats_server: NatsServer, tmp_path: Path) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("ledger", python_server("ledger.py", env={"LEDGER": str(tmp_path / "ledger.txt")}))
        assert await frames_of(nats_server.url, "balance", {"seconds": 0}, idempotent=True) == ["result"]
        # Not marked safe to run twice: the accept goes out before the call reaches the server.
        assert await frames_of(nats_server.url, "balance", {"seconds": 0}, idempotent=False) == ["accept", "result"]
        # Still running after the accept delay: accepted, so the edge does not send it again.
        assert await frames_of(nats_server.url, "balance", {"seconds": 0.3}, idempotent=True) == ["accept", "result"]
