"""SEP-1699 polling: the edge closes a long call's POST stream and the client resumes it with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from conftest import federation, open_session, python_server
from fedmcp.edge import http as http_face
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio


async def events(response: httpx2.Response) -> list[dict[str, str]]:
    """The SSE events of a response body until the server closes it."""
    found: list[dict[str, str]] = []
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                found.append(event)
            event = {}
            continue
        field, _, value = line.partition(":")
        event[field] = value.removeprefix(" ")
    if event:
        found.append(event)
    return found


async def resumed_events(
    http: httpx2.AsyncClient, url: str, headers: dict[str, str], *, until: Callable[[list[dict[str, str]]], bool]
) -> list[dict[str, str]]:
    """The SSE events of a resumed stream (a GET with `Last-Event-ID`) until `until(events so far)`: a
    resumed stream stays open for the call's later events."""
    found: list[dict[str, str]] = []
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")
                continue
            if event:
                found.append(event)
                if until(found):
                    break
            event = {}
    return found


def results(found: list[dict[str, str]], request_id: int) -> list[dict[str, Any]]:
    bodies = [json.loads(e["data"]) for e in found if e.get("data")]
    return [b for b in bodies if b.get("id") == request_id and "result" in b]


@pytest.mark.parametrize("local_idle", [None, 0.5])
async def test_a_long_call_is_closed_and_resumed_with_last_event_id(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, local_idle: float | None
) -> None:
    """With `local_idle`, the edge's idle timeout for its copy of a session is shorter than the client's
    wait before it resumes: the call still runs to its end (the session is held while it runs)."""
    if local_idle is not None:
        monkeypatch.setattr(http_face, "LOCAL_IDLE", local_idle)
    async with federation(nats_server.url, sse_poll_after=0.3) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with httpx2.AsyncClient(timeout=20) as http:
            session = await open_session(http, fed.url)
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "probe_sleep", "arguments": {"seconds": 1.5}},
            }
            async with http.stream("POST", fed.url, json=call, headers=session) as response:
                posted = await events(response)
            # A priming event (an id, no data) with a retry hint, then the stream closes: no result yet.
            assert posted[0].get("id") and not posted[0].get("data")
            assert int(posted[0]["retry"]) > 0
            assert results(posted, 2) == []
            if local_idle is not None:
                await anyio.sleep(int(posted[0]["retry"]) / 1000)  # a client waits the retry hint out
            resume = {**session, "Accept": "text/event-stream", "last-event-id": posted[-1]["id"]}
            resumed = await resumed_events(http, fed.url, resume, until=lambda got: bool(results(got, 2)))
            assert [b["result"]["content"][0]["text"] for b in results(resumed, 2)] == ["slept 1.5"]
        # The SDK client resumes by itself: a caller only sees the answer.
        async with Client(fed.url, mode="legacy") as client:
            result = await client.call_tool("probe_sleep", {"seconds": 1.2})
            assert result.content[0].text == "slept 1.2"  # type: ignore[union-attr]
            quick = await client.call_tool("probe_pid", {})  # shorter than the poll time: never closed
            assert not quick.is_error


async def test_resuming_a_stream_never_replays_another_sessions_events(nats_server: NatsServer) -> None:
    """Clients number their requests alike (1, 2, ...), so two sessions' POST streams carry the same
    request id: a `Last-Event-ID` resume replays only its own session's stream."""
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with httpx2.AsyncClient(timeout=20) as http:

            async def call(session: dict[str, str], name: str) -> list[dict[str, str]]:
                body = {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {"name": "probe_env", "arguments": {"name": name}},
                }
                async with http.stream("POST", fed.url, json=body, headers=session) as response:
                    return await events(response)

            alice, bob = await open_session(http, fed.url), await open_session(http, fed.url)
            mine = await call(alice, "PATH")
            theirs = await call(bob, "HOME")
            assert results(theirs, 7)  # bob got his answer on his own stream
            resume = {**alice, "Accept": "text/event-stream", "last-event-id": mine[0]["id"]}
            # The replay ends where the resumed stream's own priming event (an id, no data) comes.
            replayed = await resumed_events(http, fed.url, resume, until=lambda got: not got[-1].get("data"))
        assert results(replayed, 7) == results(mine, 7)  # alice's own answer again, and nothing of bob's
