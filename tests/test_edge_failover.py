"""Interchangeable edges: a handshake-era session outlives the edge that opened it.

Real processes (manager, adapter, two edges) and a raw HTTP client, so the test sees
exactly what crosses the wire: session ids, SSE event ids, `Last-Event-ID`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import msgspec
import pytest
from conftest import demo_server, federation, open_session, python_server
from fedmcp.edge import http
from fedmcp.shared.natsserver import NatsServer, free_port
from mcp import Client
from procs import Proc, fedmcp, wait_for_tools

pytestmark = pytest.mark.anyio

VERSION = "2025-11-25"
SSE = {"Accept": "application/json, text/event-stream"}


class Session:
    """One handshake-era session, spoken by hand to whichever edge each request goes to."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http
        self.id = ""
        self.next_id = 0

    def headers(self, **extra: str) -> dict[str, str]:
        out = {**SSE, "MCP-Protocol-Version": VERSION, **extra}
        if self.id:
            out["Mcp-Session-Id"] = self.id
        return out

    async def post(self, url: str, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        self.next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        with anyio.fail_after(15):
            return await self.http.post(url, json=body, headers=self.headers())

    async def call(self, url: str, method: str, params: dict[str, Any] | None = None) -> Any:
        response = await self.post(url, method, params)
        assert response.status_code == 200, response.text
        for message in sse_messages(response.text) if "event-stream" in response.headers["content-type"] else []:
            if "result" in message or "error" in message:
                return message
        return response.json()

    async def open(self, url: str) -> None:
        params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        response = await self.post(url, "initialize", params)
        assert response.status_code == 200
        self.id = response.headers["mcp-session-id"]
        with anyio.fail_after(15):
            done = await self.http.post(
                url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers()
            )
        assert done.status_code == 202


def sse_messages(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]


async def sse_events(response: httpx2.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event id, JSON-RPC message) of each SSE event with data."""
    event_id, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield event_id, json.loads(data)
            event_id, data = "", ""


async def test_kill_9_of_the_edge_holding_a_session_mid_stream_loses_no_notification(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path
) -> None:
    nats = ["--nats-url", nats_server.url]
    procs.append(Proc(fedmcp("manager", *nats), tmp_path / "manager.log"))
    server = msgspec.json.encode(python_server("watched.py", era="legacy")).decode()
    procs.append(Proc(fedmcp("adapter", *nats, "--name", "watched", "--server-json", server), tmp_path / "adapter.log"))
    urls = []
    for name in ("a", "b"):
        port = free_port()
        procs.append(Proc(fedmcp("edge", *nats, "--anonymous", "--port", str(port)), tmp_path / f"edge-{name}.log"))
        urls.append(f"http://127.0.0.1:{port}/mcp")
    edge_a, edge_b = urls
    for url in urls:
        await wait_for_tools(url, {"watched_touch"})

    touched: list[str] = []
    received: list[tuple[str, str]] = []  # (event id, uri)
    got = anyio.Event()

    async def touch(url: str, uri: str) -> None:
        touched.append(uri)
        reply = await session.call(url, "tools/call", {"name": "watched_touch", "arguments": {"uri": uri}})
        assert "result" in reply, reply

    async def listen(url: str, until: int, last_event_id: str | None = None) -> None:
        """Read the session's GET stream until `until` updates have arrived in all."""
        nonlocal got
        extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            async with session.http.stream("GET", url, headers=session.headers(**extra)) as stream:
                assert stream.status_code == 200
                async for event_id, message in sse_events(stream):
                    assert message["method"] == "notifications/resources/updated", message
                    received.append((event_id, message["params"]["uri"]))
                    got.set()
                    if len(received) >= until:
                        return
        except (httpx2.RemoteProtocolError, httpx2.ReadError):
            pass  # the edge died under the stream, as a client sees it

    async def arrived(count: int) -> None:
        nonlocal got
        with anyio.fail_after(15):
            while len(received) < count:
                await got.wait()
                got = anyio.Event()

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(15, read=None)) as http:
        session = Session(http)
        await session.open(edge_a)
        # State changes land on either edge: a round-robin balancer in front of them would do this.
        assert "result" in await session.call(edge_a, "resources/subscribe", {"uri": "watch://a"})
        assert "result" in await session.call(edge_b, "resources/subscribe", {"uri": "watch://b"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, edge_a, 1000)
            for i in range(6):
                await touch(edge_b, "watch://a" if i % 2 else "watch://b")
                await arrived(i + 1)  # the stream is live: each update arrives before the next touch
            procs[2].kill()  # kill -9 of edge A, which holds the GET stream
        assert len(received) == 6
        # Updates made while the client has no stream at all are kept in the feed.
        for i in range(6, 10):
            await touch(edge_b, "watch://a" if i % 2 else "watch://b")
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, edge_b, 14, received[-1][0])
            await arrived(10)  # the replay
            for i in range(10, 14):
                await touch(edge_b, "watch://a" if i % 2 else "watch://b")
                await arrived(i + 1)
        # Every notification exactly once, in order, across the two edges.
        assert [uri for _, uri in received] == touched
        ids = [int(event_id.removeprefix("f-")) for event_id, _ in received]
        assert ids == sorted(set(ids))
        # The rest of the session goes on at edge B, with what was negotiated at edge A.
        listed = await session.call(edge_b, "tools/list")
        assert "watched_touch" in {t["name"] for t in listed["result"]["tools"]}
        # Ending the session at one edge ends it at every edge.
        with anyio.fail_after(15):
            assert (await http.delete(edge_b, headers=session.headers())).status_code == 200
        gone = await session.post(edge_b, "tools/list")
        assert gone.status_code == 404


async def test_an_idle_session_costs_no_transport_and_is_adopted_again(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "LOCAL_IDLE", 0.5)
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        assert fed.edge is not None
        held = fed.edge.http_sessions._server_instances
        async with Client(fed.url, mode="legacy") as client:
            await client.set_logging_level("warning")
            (session_id,) = held
            with anyio.fail_after(10):
                while session_id in held:  # noqa: ASYNC110 -- a timer drops it; there is no event to wait on
                    await anyio.sleep(0.05)
            assert session_id in fed.edge.directory.records  # the session itself lives on
            result = await client.call_tool("demo_add", {"a": 1, "b": 2})
            assert result.structured_content == {"result": 3}
            assert session_id in held  # adopted again, with what the session had set
            assert fed.edge.directory.records[session_id].log_level == "warning"


async def test_a_request_that_meets_the_local_copy_going_idle_is_served(nats_server: NatsServer) -> None:
    """The edge's copy of a session is dropped after LOCAL_IDLE; a request arriving as the drop begins
    (the copy's idle scope cancelled, its task not yet unwound) is the session's, which lives on in the
    directory: it is served by a copy adopted again, not answered 404 "terminated"."""
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        assert fed.edge is not None
        held = fed.edge.http_sessions._server_instances
        async with httpx2.AsyncClient(timeout=20) as client:
            session = await open_session(client, fed.url)
            (session_id,) = held
            going = held[session_id]
            assert going.idle_scope is not None
            going.idle_scope.cancel()  # what the idle timeout does when it fires
            listing = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}  # (not the session lane's: the SDK's)
            answer = await client.post(fed.url, json=listing, headers=session)
            assert answer.status_code == 200, answer.text
            assert "demo_add" in answer.text
            assert held.get(session_id) is not None and held[session_id] is not going
            assert session_id in fed.edge.directory.records


async def read_to_end(stream: httpx2.Response) -> None:
    """Read a streamed response to its end (a connection cut before the last chunk raises
    httpx2.RemoteProtocolError)."""
    with anyio.fail_after(10):
        async for _ in stream.aiter_bytes():
            pass


@asynccontextmanager
async def handshake_session(nats_url: str) -> AsyncIterator[tuple[str, httpx2.AsyncClient, dict[str, str]]]:
    """A federation's URL, an HTTP client and the headers of a handshake-era session opened on it."""
    async with federation(nats_url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=20) as client:
            yield fed.url, client, await open_session(client, fed.url)


async def test_a_deleted_session_ends_its_get_stream_on_the_edge_that_deleted_it(nats_server: NatsServer) -> None:
    async with handshake_session(nats_server.url) as (url, client, session):
        listen = {**session, "Accept": "text/event-stream"}
        async with client.stream("GET", url, headers=listen) as stream:
            assert stream.status_code == 200
            assert (await client.delete(url, headers=session)).status_code == 200
            # The stream ends, and cleanly: its last chunk is sent (as on every other edge when the
            # deletion reaches it), so the client sees an end, not a broken connection.
            await read_to_end(stream)
        again = await client.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=session)
        assert again.status_code == 404


async def test_a_reconnected_get_stream_ends_the_older_one_cleanly(nats_server: NatsServer) -> None:
    """A client that opens the session's GET stream again (a plain one, or a resume with Last-Event-ID)
    replaces its older stream; that one ends with its last chunk, and the newer one carries on."""
    async with handshake_session(nats_server.url) as (url, client, session):
        listen = {**session, "Accept": "text/event-stream"}
        async with client.stream("GET", url, headers=listen) as first:
            assert first.status_code == 200
            resume = {**listen, "Last-Event-ID": "f-1"}
            async with client.stream("GET", url, headers=resume) as second:
                assert second.status_code == 200
                await read_to_end(first)
                async with client.stream("GET", url, headers=listen) as third:
                    assert third.status_code == 200
                    await read_to_end(second)
                    assert (await client.delete(url, headers=session)).status_code == 200
                    await read_to_end(third)
