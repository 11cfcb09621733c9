"""The edge's session lane (session_lane.py): plain handshake-era tools/call served from the session's
record, answered as the SDK's path answers them: on the wire, in the event store, in what follows."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import nats
import pytest
from conftest import Federation, ask_everything, demo_server, federation, open_session, probe_saw_cancel, python_server
from fedmcp.edge.session_lane import SessionLane, _Channel
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.subjects import Subjects
from mcp import Client

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("spans_off")]


class Spy:
    """Counts the calls the lane serves and the questions it asks (the real methods run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.served = 0
        self.serving = anyio.Event()
        """Set when the lane has taken its first call."""
        self.asked: list[str] = []
        serve, ask = SessionLane._serve, _Channel.ask

        async def counted_serve(lane: SessionLane, *args: Any) -> None:
            self.served += 1
            self.serving.set()
            await serve(lane, *args)

        async def counted_ask(channel: _Channel, method: str, params: dict[str, Any]) -> Any:
            self.asked.append(method)
            return await ask(channel, method, params)

        monkeypatch.setattr(SessionLane, "_serve", counted_serve)
        monkeypatch.setattr(_Channel, "ask", counted_ask)


def sdk_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SessionLane, "_plan", lambda lane, message: None)


@asynccontextmanager
async def probe_session(nats_url: str) -> AsyncIterator[tuple[Federation, httpx2.AsyncClient, dict[str, str]]]:
    """A federation with probe_server.py, an HTTP client, and a handshake-era session opened by hand."""
    async with federation(nats_url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with httpx2.AsyncClient(timeout=20) as http:
            yield fed, http, await open_session(http, fed.url)


def _call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def _wire(
    http: httpx2.AsyncClient, url: str, session: dict[str, str], bodies: list[dict[str, Any]] | None = None
) -> list[tuple[int, dict[str, str], str]]:
    """Status, headers that matter and body (event ids as N) of a few requests (default: two calls)."""
    answers = []
    for body in bodies or [_call(5, "probe_pid", {}), _call(6, "probe_fail", {"reason": "no"})]:
        response = await http.post(url, json=body, headers=session)
        kept = {k: v for k, v in response.headers.items() if k not in ("date", "content-length")}
        answers.append((response.status_code, kept, re.sub(r"id: \d+", "id: N", response.text)))
    return answers


async def test_plain_calls_take_the_lane_and_answer_as_the_sdk_path_on_the_wire(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    async with probe_session(nats_server.url) as (fed, http, session):
        through_lane = await _wire(http, fed.url, session)
        assert spy.served == 2
        with monkeypatch.context() as patch:
            sdk_only(patch)
            through_sdk = await _wire(http, fed.url, session)
        assert spy.served == 2
    assert through_lane == through_sdk  # headers, priming event, result and tool error alike
    assert "retry: 1000" in through_lane[0][2]  # the priming event, with the edge's retry hint


async def test_log_messages_follow_the_sessions_level_ahead_of_the_result(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        seen: list[str] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            seen.append(params.level)

        async with Client(fed.url, mode="legacy", logging_callback=on_log) as client:
            await client.set_logging_level("warning")
            result = await client.call_tool("probe_chatty", {})
            seen.append("result")
    assert result.structured_content == {"result": "logged"}
    assert seen == ["warning", "error", "result"]
    assert spy.served == 1


@pytest.mark.parametrize("back", ["legacy", "auto"])
async def test_the_servers_questions_are_asked_on_the_calls_stream(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, back: str
) -> None:
    """legacy back: mid-call requests; auto (2026-07-28) back: input_required, asked by the edge."""
    spy = Spy(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_server("asker", python_server("asker.py", era=back))
        await ask_everything(fed.url, "legacy")
    assert spy.served == 3
    assert spy.asked == ["elicitation/create", "sampling/createMessage", "roots/list"]


async def test_a_cancelled_call_is_cancelled_at_the_server(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode="legacy") as client:
            with anyio.move_on_after(1.0):  # the SDK client sends notifications/cancelled
                await client.call_tool("probe_sleep", {"seconds": 30})
            assert spy.served == 1
            await probe_saw_cancel(client, 30)


async def test_a_client_that_goes_away_resumes_the_call_with_last_event_id(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Going away is no cancel in the handshake era: the call runs on and its answer is replayed."""
    spy = Spy(monkeypatch)
    async with probe_session(nats_server.url) as (fed, http, session):
        async with http.stream("POST", fed.url, json=_call(9, "probe_sleep", {"seconds": 1.5}), headers=session) as r:
            lines = r.aiter_lines()
            first = await anext(lines)  # the priming event's id (sent once the call runs a while)
        assert first.startswith("id: ")
        resume = {**session, "Accept": "text/event-stream", "last-event-id": first.removeprefix("id: ")}
        replayed: list[dict[str, Any]] = []
        with anyio.fail_after(10):
            async with http.stream("GET", fed.url, headers=resume) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: ":
                        replayed.append(json.loads(line.removeprefix("data: ")))
                        break
    assert spy.served == 1
    assert replayed[0]["id"] == 9 and replayed[0]["result"]["content"][0]["text"] == "slept 1.5"


async def test_requests_the_lane_does_not_take_get_the_sdks_answer(nats_server: NatsServer) -> None:
    """Another principal's session, a stale version header, progress: the SDK's path answers."""
    async with probe_session(nats_server.url) as (fed, http, session):
        stale = {**session, "mcp-protocol-version": "2025-06-18"}
        response = await http.post(fed.url, json=_call(3, "probe_pid", {}), headers=stale)
        assert response.status_code in (200, 400)  # the SDK's path decides, as before the lane
        progress = _call(4, "probe_count", {"steps": 2})
        progress["params"]["_meta"] = {"progressToken": "p1"}
        response = await http.post(fed.url, json=progress, headers=session)
        assert response.text.count("notifications/progress") == 2


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "sdk"])
async def test_the_clients_trace_context_travels_on_when_the_edge_records_no_spans(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, lane: bool
) -> None:
    if not lane:
        sdk_only(monkeypatch)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        nc = await nats.connect(nats_server.url)
        try:
            seen: list[str] = []
            sub = await nc.subscribe(Subjects().rpc("probe"))  # beside the adapters' queue group: a copy
            async with httpx2.AsyncClient(timeout=20) as http:
                session = await open_session(http, fed.url)
                call = _call(3, "probe_pid", {})
                call["params"]["_meta"] = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
                response = await http.post(fed.url, json=call, headers=session)
                assert '"result"' in response.text
            with anyio.fail_after(5):
                message = await sub.next_msg()
            seen.append((message.headers or {}).get("traceparent", ""))
        finally:
            await nc.close()
    assert trace_id in seen[0]


async def test_a_session_that_ends_mid_call_cancels_the_call(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with httpx2.AsyncClient(timeout=20) as http, anyio.create_task_group() as tg:
            session = await open_session(http, fed.url)
            answered: list[str] = []

            async def long_call() -> None:
                response = await http.post(fed.url, json=_call(4, "probe_sleep", {"seconds": 30}), headers=session)
                answered.append(response.text)

            tg.start_soon(long_call)
            with anyio.fail_after(10):
                await spy.serving.wait()  # the call is on the lane
            assert (await http.delete(fed.url, headers=session)).status_code == 200
            async with Client(fed.url, mode="legacy") as observer:
                await probe_saw_cancel(observer, 30)
        assert answered and '"result"' not in answered[0]  # the stream ended without an answer


async def test_reads_take_the_lane_and_answer_as_the_sdk_path_on_the_wire(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=20) as http:
            session = await open_session(http, fed.url)
            async with Client(fed.url, mode="legacy") as client:
                uri = str((await client.list_resources()).resources[0].uri)
            reads = [
                {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": uri}},
                {"jsonrpc": "2.0", "id": 8, "method": "resources/read", "params": {"uri": uri, "_meta": {"k": 1}}},
            ]
            through_lane = await _wire(http, fed.url, session, reads)
            assert spy.served == 2
            with monkeypatch.context() as patch:
                sdk_only(patch)
                through_sdk = await _wire(http, fed.url, session, reads)
            assert spy.served == 2
    assert through_lane == through_sdk
    assert '"contents"' in through_lane[0][2]
