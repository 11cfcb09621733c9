"""Stateful backing servers (`affinity = "session"`): one backing session per front session, pinned to
one adapter instance; losing that instance expires the front session, never a silent switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import msgspec
import pytest
from conftest import federation, http_server, python_server
from fedmcp.cli.inspect import read_sessions, render_sessions
from fedmcp.shared import buckets, envelopes, jsonrpc
from fedmcp.shared.config import BackingServer, load_toml
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.subjects import Subjects
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from nats.aio.client import Client as NATS
from procs import metric
from prometheus_client import REGISTRY

pytestmark = pytest.mark.anyio

PINNED = "fedmcp_adapter_pinned_sessions"


def counter(**kw: Any) -> Any:
    return python_server("counter.py", affinity="session", **kw)


def pinned_metric(server: str = "counter") -> float:
    return REGISTRY.get_sample_value(PINNED, {"server": server}) or 0.0


@asynccontextmanager
async def front(url: str, mode: str = "legacy", **kw: Any) -> AsyncIterator[tuple[Client, Callable[[], str]]]:
    """An SDK client of the edge, with a way to read its `Mcp-Session-Id`."""
    seen: list[str] = []

    async def record(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid:
            seen.append(sid)

    async with (
        httpx2.AsyncClient(event_hooks={"response": [record]}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, **kw) as client,  # type: ignore[arg-type]
    ):
        yield client, lambda: seen[-1]


async def bump(client: Client) -> dict[str, Any]:
    result = await client.call_tool("counter_bump", {})
    assert not result.is_error, result
    content = result.structured_content
    assert isinstance(content, dict)
    return content


async def until(condition: Callable[[], bool], timeout: float = 15) -> None:
    """Until `condition` holds (it reads what other tasks and processes change), bounded."""
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await anyio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def raw_call(url: str, session_id: str, name: str) -> httpx2.Response:
    """A tools/call POSTed with a session id, as a client that moved to another edge replica would."""
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    headers = {
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-11-25",
        "accept": "application/json, text/event-stream",
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body, headers=headers)


async def gone(url: str, session_id: str) -> None:
    """Until the session's id answers 404 (it expires just after the lost call was answered)."""
    with anyio.fail_after(10):
        while (response := await raw_call(url, session_id, "counter_bump")).status_code != 404:
            # Meanwhile the same error (or a stream the expiry cut short), never a fresh session's answer.
            assert response.status_code == 200 and '"result"' not in response.text
            await anyio.sleep(0.1)


def sse_result(response: httpx2.Response) -> dict[str, Any]:
    for line in response.text.splitlines():
        if line.startswith("data:") and '"id":7' in line.replace(" ", ""):
            message: dict[str, Any] = msgspec.json.decode(line[5:].strip())
            return message
    raise AssertionError(f"no response in {response.text!r}")


async def test_each_front_session_gets_its_own_backing_session(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("counter", counter())
        assert fed.edge is not None
        assert fed.edge.view.table.servers["counter"].settings.affinity == "session"  # announced
        before = pinned_metric()
        async with front(fed.url) as (a, _), front(fed.url) as (b, _):
            seen_a = [await bump(a), await bump(a)]
            seen_b = [await bump(b)]
            seen_a.append(await bump(a))
            seen_b.append(await bump(b))
            assert [r["count"] for r in seen_a] == [1, 2, 3]
            assert [r["count"] for r in seen_b] == [1, 2]
            assert len({r["pid"] for r in seen_a}) == len({r["pid"] for r in seen_b}) == 1
            pids = {seen_a[0]["pid"], seen_b[0]["pid"]}
            assert len(pids) == 2  # two processes of their own
            assert len(adapter.pinned or ()) == 2 and pinned_metric() == before + 2
            # A 2026-07-28 client has no session: served by the shared session, nothing pinned.
            async with Client(fed.url, mode="2026-07-28") as modern:  # type: ignore[arg-type]
                shared = await bump(modern)
                assert shared["pid"] not in pids and shared["count"] == 1
            assert len(adapter.pinned or ()) == 2
        # Both clients sent DELETE: their backing sessions (and processes) are gone.
        await until(lambda: len(adapter.pinned or ()) == 0 and pinned_metric() == before)
        await until(lambda: not any(alive(pid) for pid in pids))


@pytest.fixture
def http_counter() -> Iterator[str]:
    """counter.py over Streamable HTTP on a free loopback port."""
    with http_server("counter.py") as url:
        yield url


async def test_an_http_backing_server_gives_each_front_session_its_own_mcp_session(
    nats_server: NatsServer, http_counter: str
) -> None:
    async with federation(nats_server.url) as fed:
        server = BackingServer(url=http_counter, affinity="session")
        with anyio.fail_after(30):
            while True:  # the HTTP server process may still be starting
                adapter = await fed.add_server("counter", server, wait=False)
                with anyio.move_on_after(5):
                    await adapter.backend.wait_ready()
                if adapter.backend.catalog is not None:
                    break
        await fed.wait_for_server("counter", present=True)
        async with front(fed.url) as (a, _), front(fed.url) as (b, _):
            seen_a = [await bump(a), await bump(a), await bump(a)]
            seen_b = [await bump(b)]
        assert [r["count"] for r in seen_a] == [1, 2, 3] and seen_b[0]["count"] == 1
        sessions = {r["session"] for r in seen_a} | {seen_b[0]["session"]}
        assert len(sessions) == 2 and "process" not in sessions  # two MCP sessions of the backing server
        await until(lambda: len(adapter.pinned or ()) == 0)


async def test_two_replicas_and_two_edges_keep_a_session_on_one_instance(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        replicas = [await fed.add_server("counter", counter()) for _ in range(2)]
        other_edge = await fed.add_edge()
        async with front(fed.url) as (a, sid_a), front(fed.url) as (b, _), front(fed.url) as (c, _):
            results: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": []}
            for _ in range(4):
                for name, client in (("a", a), ("b", b), ("c", c)):
                    results[name].append(await bump(client))
            for seen in results.values():
                assert [r["count"] for r in seen] == [1, 2, 3, 4]
                assert len({r["pid"] for r in seen}) == 1  # one backing session throughout
            holders = [adapter for adapter in replicas if sid_a() in (adapter.pinned or ())]
            assert len(holders) == 1
            assert sum(len(adapter.pinned or ()) for adapter in replicas) == 3
            # Another edge replica honours the pin: the session goes on where it was.
            answer = sse_result(await raw_call(other_edge, sid_a(), "counter_bump"))
            structured = answer["result"]["structuredContent"]
            assert structured["count"] == 5 and structured["pid"] == results["a"][0]["pid"]
            assert (await bump(a))["count"] == 6


def start_adapter(nats_url: str, log: Path, http_port: int) -> subprocess.Popen[bytes]:
    server = msgspec.json.encode(python_server("counter.py")).decode()  # affinity from the command line
    args = [sys.executable, "-m", "fedmcp.adapter.main", "--nats-url", nats_url, "--name", "counter"]
    args += ["--heartbeat", "0.5", "--affinity", "session", "--http-port", str(http_port), "--server-json", server]
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=out)


async def pinned_at(port: int) -> float:
    async with httpx2.AsyncClient(timeout=5) as http:
        return metric((await http.get(f"http://127.0.0.1:{port}/metrics")).text, PINNED, server="counter")


async def test_kill_9_of_the_holding_instance_expires_the_session(
    nats_server: NatsServer, replicas: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    async with federation(nats_server.url) as fed:
        replicas.extend(start_adapter(nats_server.url, tmp_path / f"adapter{i}.log", p) for i, p in enumerate(ports))
        await fed.wait_for_server("counter", present=True)
        assert fed.edge is not None
        with anyio.fail_after(60):
            await fed.edge.view.wait_until(lambda table: len(table.servers["counter"].instances) >= 2)
        async with front(fed.url) as (client, sid):
            first, second = await bump(client), await bump(client)
            assert (first["count"], second["count"]) == (1, 2)
            assert (first["adapter"], first["pid"]) == (second["adapter"], second["pid"])  # one instance, one process
            holder = next(p for p in replicas if p.pid == first["adapter"])
            survivor = next(p for p in replicas if p is not holder)
            assert await pinned_at(ports[replicas.index(holder)]) == 1
            assert await pinned_at(ports[replicas.index(survivor)]) == 0
            # The pin is in the region's bucket, naming the holding instance.
            nc = NATS()
            await nc.connect(nats_server.url)
            try:
                kv = await nc.jetstream().key_value(Subjects().bucket(buckets.PINS, "local"))
                pin = envelopes.decode((await kv.get(buckets.pin_key(sid(), "counter"))).value or b"", envelopes.Pin)
            finally:
                await nc.close()
            assert pin.state == "pinned" and pin.server == "counter" and pin.instance
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            with pytest.raises(MCPError) as lost:
                await client.call_tool("counter_bump", {})
            assert lost.value.error.code == jsonrpc.SESSION_EXPIRED
            assert "the upstream instance holding this session was lost; re-initialize" in lost.value.error.message
            # Never a fresh backing session behind the client's back: the session is gone (HTTP 404).
            await gone(fed.url, sid())
            assert await pinned_at(ports[replicas.index(survivor)]) == 0
        # A new session starts over, on the replica that is left.
        async with front(fed.url) as (fresh, _):
            again = await bump(fresh)
            assert again["count"] == 1 and again["adapter"] == survivor.pid


async def test_adapter_drain_closes_its_pinned_sessions(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("counter", counter())
        async with front(fed.url) as (client, _):
            pid = (await bump(client))["pid"]
            assert len(adapter.pinned or ()) == 1
            adapter.stop()
            await until(lambda: not alive(pid))
            assert len(adapter.pinned or ()) == 0
            with pytest.raises(MCPError) as lost:
                await client.call_tool("counter_bump", {})
            assert lost.value.error.code == jsonrpc.SESSION_EXPIRED


async def test_idle_pinned_sessions_are_closed_and_their_front_session_expires(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("counter", counter(session_idle_timeout=0.6))
        async with front(fed.url) as (client, sid):
            pid = (await bump(client))["pid"]
            await until(lambda: len(adapter.pinned or ()) == 0)
            await until(lambda: not alive(pid))
            with pytest.raises(MCPError) as lost:
                await client.call_tool("counter_bump", {})
            assert lost.value.error.code == jsonrpc.SESSION_EXPIRED
            await gone(fed.url, sid())


async def test_an_adapter_full_of_pinned_sessions_answers_busy(nats_server: NatsServer) -> None:
    async with federation(nats_server.url, overload_wait=0.5) as fed:
        adapter = await fed.add_server("counter", counter(max_sessions=1))
        async with front(fed.url) as (a, _):
            assert (await bump(a))["count"] == 1
            async with front(fed.url) as (b, _):
                with pytest.raises(MCPError) as busy:
                    await b.call_tool("counter_bump", {})
                assert busy.value.error.code == jsonrpc.OVERLOADED
                assert (await bump(a))["count"] == 2
        await until(lambda: len(adapter.pinned or ()) == 0)
        async with front(fed.url) as (c, _):  # room again
            assert (await bump(c))["count"] == 1


async def test_log_messages_of_concurrent_calls_reach_their_session(nats_server: NatsServer) -> None:
    """On a shared backing session two calls in flight make a log message unattributable; on a front
    session's own backing session it is that session's either way."""
    async with federation(nats_server.url) as fed:
        await fed.add_server("counter", counter())
        words: list[str] = []

        async def on_log(params: Any) -> None:
            words.append(str(params.data))

        async with front(fed.url, logging_callback=on_log) as (client, _), anyio.create_task_group() as tg:
            for word in ("alpha", "beta"):
                tg.start_soon(client.call_tool, "counter_say", {"word": word, "seconds": 0.5})
        assert sorted(words) == ["alpha", "beta"]


async def test_a_front_without_a_session_id_is_one_session_per_connection(nats_server: NatsServer) -> None:
    """stdio (and HTTP+SSE) fronts have no Mcp-Session-Id: each connection to the edge is one session,
    ended when the edge stops (or the connection is gone)."""
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("counter", counter())
        assert fed.edge is not None
        federated = fed.edge.federated
        async with Client(federated.server, mode="legacy") as one, Client(federated.server, mode="legacy") as two:
            assert [(await bump(one))["count"] for _ in range(2)] == [1, 2]
            assert (await bump(two))["count"] == 1
            assert len(adapter.pinned or ()) == 2 and len(federated.pins.local_sessions) == 2
            await federated.release_local_sessions()  # what the edge runtime does when it stops
            await until(lambda: len(adapter.pinned or ()) == 0)


def test_affinity_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "fedmcp.toml"
    path.write_text('[servers.notes]\ncommand = "notes-server"\naffinity = "session"\nmax_sessions = 8\n')
    server = load_toml(path).servers["notes"]
    assert (server.affinity, server.max_sessions) == ("session", 8)
    path.write_text('[servers.notes]\ncommand = "notes-server"\naffinity = "sticky"\n')
    with pytest.raises(ValueError, match="affinity"):
        load_toml(path)


async def test_fedmcp_ls_sessions_shows_front_sessions_and_their_pins(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("counter", counter())
        async with front(fed.url) as (client, session_id):
            await client.set_logging_level("warning")
            await bump(client)
            records, pins = await read_sessions(nats_server.url, "fedmcp")
            shown = render_sessions(records, pins)
        sid = session_id()
        (record,) = [r for r in records if r.id == sid]
        assert (record.protocol_version, record.log_level) == ("2025-11-25", "warning")
        (pin,) = [p for p in pins if p.session == sid]
        assert (pin.server, pin.state) == ("counter", "pinned") and pin.instance
        row = next(line for line in shown.splitlines() if line.startswith(sid) and "warning" in line)
        assert "2025-11-25" in row
        assert any(line.startswith(sid) and pin.instance in line for line in shown.splitlines())
