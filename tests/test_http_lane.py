"""The adapter's HTTP lane (http_lane.py): calls to a 2026-07-28 HTTP backing server as bytes.

Its answers are checked against the SDK's own client transport on the same wire: a real MCP server
through the whole federation, and a scripted HTTP server (real HTTP on loopback) for the answers a
well-behaved server never gives (202, error statuses, redirects, odd content types, cut and resumed
SSE streams). The SSE parser is checked against httpx2's, which the SDK's transport uses.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import msgspec
import pytest
import uvicorn
from conftest import ask_everything, federation, http_server
from fedmcp.adapter.envelope import enveloped, hop_headers
from fedmcp.adapter.http_lane import EventStream, EventTooLarge, HttpLane, Redirected
from fedmcp.adapter.service import Adapter
from fedmcp.shared import jsonrpc
from fedmcp.shared.config import BackingServer
from fedmcp.shared.natsserver import NatsServer, free_port
from httpx2._sse import _SSEParser
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

pytestmark = pytest.mark.anyio
VERSION = "2026-07-28"


@pytest.fixture
def http_probe() -> Iterator[str]:
    with http_server("probe_server.py") as url:
        yield url


class Counted:
    """Counts the requests HttpLane.request sends (the real method runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = HttpLane.request

        async def request(lane: HttpLane, method: str, *args: Any, **kw: Any) -> msgspec.Raw:
            self.calls.append(method)
            return await real(lane, method, *args, **kw)

        monkeypatch.setattr(HttpLane, "request", request)


def _lane_of(adapter: Adapter) -> HttpLane:
    lane = adapter.backend.primary._http
    assert lane is not None, "a 2026-07-28 HTTP session has an HTTP lane"
    return lane


async def _answers(client: Client) -> list[Any]:
    answers: list[Any] = []
    for name, args in [("remote_pid", {}), ("remote_fail", {"reason": "no"}), ("remote_header", {"name": "x"})]:
        result = await client.call_tool(name, args)
        answers.append((result.is_error, result.structured_content, [c.model_dump() for c in result.content]))
    return answers


async def test_calls_take_the_lane_and_answer_as_the_sdk_path(
    nats_server: NatsServer, http_probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_http_server("remote", BackingServer(url=http_probe))
        lane = _lane_of(adapter)
        async with Client(fed.url, mode=VERSION) as client:
            through_lane = await _answers(client)
            assert counted.calls == ["tools/call"] * 3
            lane.usable = False  # the same calls the SDK's way
            through_sdk = await _answers(client)
            assert counted.calls == ["tools/call"] * 3
        assert through_lane == through_sdk
        assert through_lane[1][0] is True  # the failing tool is a tool error, not a protocol error


async def test_log_messages_on_the_stream_reach_the_client_before_the_result(
    nats_server: NatsServer, http_probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_http_server("remote", BackingServer(url=http_probe))
        seen: list[str] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            seen.append(params.level)

        async with Client(fed.url, mode=VERSION, logging_callback=on_log, log_level="info") as client:
            result = await client.call_tool("remote_chatty", {})
            seen.append("result")
        assert result.structured_content == {"result": "logged"}
        assert seen == ["info", "warning", "error", "result"]
        assert counted.calls == ["tools/call"]


async def test_a_cancelled_call_is_cancelled_at_the_server(
    nats_server: NatsServer, http_probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    async with federation(nats_server.url) as fed:
        await fed.add_http_server("remote", BackingServer(url=http_probe))
        async with Client(fed.url, mode=VERSION) as client:
            with anyio.move_on_after(1.0):
                await client.call_tool("remote_sleep", {"seconds": 30})
            assert counted.calls == ["tools/call"]
            with anyio.fail_after(20):  # the cancel travels edge -> NATS -> adapter -> a dropped connection
                while True:  # the server handles the cancel in its own time: ask it
                    if (await client.call_tool("remote_cancelled", {})).structured_content == {"result": [30]}:
                        break
                    await anyio.sleep(0.05)


COMBOS = [("legacy", "legacy"), (VERSION, VERSION), (VERSION, "legacy"), ("legacy", "auto")]


@pytest.mark.parametrize(("front", "back"), COMBOS, ids=[f"{f}-front/{b}-back" for f, b in COMBOS])
async def test_questions_mid_call_travel_the_lane_in_every_era_combination(
    nats_server: NatsServer, front: str, back: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handshake-era server asks on the call's own stream; the lane answers with a POST of its own."""
    counted = Counted(monkeypatch)
    with http_server("asker.py") as url:
        async with federation(nats_server.url) as fed:
            await fed.add_http_server("asker", BackingServer(url=url, era=back))
            await ask_everything(fed.url, front)
    assert counted.calls and set(counted.calls) == {"tools/call"}


async def test_handshake_era_calls_carry_the_session_and_log_at_its_level(
    nats_server: NatsServer, http_probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_http_server("remote", BackingServer(url=http_probe, era="legacy"))
        assert adapter.backend.primary._http_session is not None  # the server's session id, sent by the lane
        seen: list[str] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            seen.append(params.level)

        async with Client(fed.url, mode="legacy", logging_callback=on_log) as client:
            await client.set_logging_level("warning")
            result = await client.call_tool("remote_chatty", {})
            seen.append("result")
            through_lane = await _answers(client)
            _lane_of(adapter).usable = False
            through_sdk = await _answers(client)
    assert result.structured_content == {"result": "logged"}
    assert seen == ["warning", "error", "result"]
    assert through_lane == through_sdk
    assert counted.calls == ["tools/call"] * 4


# -- the answers of a scripted server ---------------------------------------------------------
RESULT = {"content": [{"type": "text", "text": "ok"}], "isError": False}


def _sse(*events: str) -> Callable[[Request], Awaitable[Response]]:
    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for event in events:
                yield event.encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return stream


def _response(request_id: Any = 1, **extra: Any) -> str:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, **(extra or {"result": RESULT})}).decode()


RESUMED: list[str] = []


async def _resumable(request: Request) -> Response:
    if request.method == "GET":
        RESUMED.append(request.headers.get("last-event-id", ""))
        return await _sse(f"id: e2\ndata: {_response()}\n\n")(request)
    return await _sse("id: e1\nretry: 10\ndata:\n\n")(request)


ASKED: dict[str, Any] = {}


async def _asking(request: Request) -> Response:
    """Asks the client for its roots on the call's stream, and answers the call once the answer came."""
    message = msgspec.json.decode(await request.body())
    if "method" not in message:  # the client's answer
        ASKED["answer"], ASKED["headers"] = message, dict(request.headers)
        ASKED["answered"].set()
        return Response(status_code=202)
    ASKED["answered"] = anyio.Event()
    ask = msgspec.json.encode({"jsonrpc": "2.0", "id": "s1", "method": "roots/list"}).decode()

    async def body() -> AsyncIterator[bytes]:
        yield f"data: {ask}\n\n".encode()
        await ASKED["answered"].wait()
        yield f"data: {_response(message['id'])}\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream")


def _json(status: int, body: Any, media_type: str = "application/json") -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        if isinstance(body, bytes | str):
            return Response(body, status_code=status, media_type=media_type)
        return JSONResponse(body, status_code=status)

    return answer


LOG = msgspec.json.encode(
    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "step"}}
).decode()
SCRIPTS: dict[str, Callable[[Request], Awaitable[Response]]] = {
    "json": _json(200, {"jsonrpc": "2.0", "id": 1, "result": RESULT}),
    "accepted": _json(202, b""),
    "not-found": _json(404, b"nothing here", "text/plain"),
    "rpc-error": _json(400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32602, "message": "bad name"}}),
    "broken": _json(500, b"oops", "text/plain"),
    "text": _json(200, b"hello", "text/plain"),
    "garbled": _json(200, b"{not json", "application/json"),
    "sse": _sse(
        ": ping\r\n\r\n",
        "id: a\r\ndata:\r\n\r\n",
        f"event: message\rdata: {LOG}\r\r",
        f"data: {_response()[:20]}",
        f"{_response()[20:]}\n\n",
    ),
    "sse-error": _sse(f"data: {_response(error={'code': -32000, 'message': 'down'})}\n\n"),
    "sse-cut": _sse(f"data: {LOG}\n\n"),
    "sse-resume": _resumable,
}


@asynccontextmanager
async def scripted() -> AsyncIterator[str]:
    """The scripts above, one path each, served by uvicorn on a free loopback port."""
    routes = [Route(f"/{name}", answer, methods=["GET", "POST"]) for name, answer in SCRIPTS.items()]

    async def moved(request: Request) -> Response:
        return Response(status_code=307, headers={"location": "http://127.0.0.2:9/elsewhere"})

    routes.append(Route("/moved", moved, methods=["POST"]))
    routes.append(Route("/ask", _asking, methods=["POST"]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while True:  # uvicorn has no started event to wait on
                if server.started:
                    break
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


Answer = tuple[str, Any]


async def _through_sdk(url: str) -> tuple[Answer, list[str]]:
    """One tools/call through the SDK's own transport (no session: the 2026-07-28 request stands alone)."""
    body = enveloped(VERSION, {"name": "t", "arguments": {}}, {}, "info")
    request = types.JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params=body)
    logs: list[str] = []
    metadata = ClientMessageMetadata(headers=hop_headers(VERSION, "tools/call", body, {}))
    async with httpx2.AsyncClient() as http, streamable_http_client(url, http_client=http) as (read, write):
        await write.send(SessionMessage(request, metadata=metadata))
        with anyio.fail_after(10):
            async for message in read:
                assert isinstance(message, SessionMessage)
                root = message.message
                if isinstance(root, types.JSONRPCNotification):
                    logs.append(root.method)
                    continue
                if isinstance(root, types.JSONRPCError):
                    return ("error", (root.error.code, root.error.message)), logs
                assert isinstance(root, types.JSONRPCResponse)
                return ("result", root.result), logs
    raise AssertionError("no answer")


async def _through_lane(url: str) -> tuple[Answer, list[str]]:
    body = enveloped(VERSION, {"name": "t", "arguments": {}}, {}, "info")
    logs: list[str] = []

    async def on_note(method: str, params: dict[str, Any]) -> None:
        logs.append(method)

    lane = HttpLane(url, {})
    try:
        raw = await lane.request(
            "tools/call", body, headers=hop_headers(VERSION, "tools/call", body, {}), timeout=10, on_note=on_note
        )
        return ("result", msgspec.json.decode(raw)), logs
    except MCPError as exc:
        return ("error", (exc.error.code, exc.error.message)), logs
    finally:
        await lane.close()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
async def test_every_answer_maps_as_the_sdk_transport_maps_it(script: str) -> None:
    async with scripted() as base:
        RESUMED.clear()
        lane_answer, lane_logs = await _through_lane(f"{base}/{script}")
        resumed_by_lane = list(RESUMED)
        RESUMED.clear()
        sdk_answer, sdk_logs = await _through_sdk(f"{base}/{script}")
    if script == "garbled":  # the same code; the message quotes each parser's own complaint
        assert lane_answer[1][0] == sdk_answer[1][0] == jsonrpc.PARSE_ERROR
    else:
        assert lane_answer == sdk_answer
    assert lane_logs == sdk_logs
    assert resumed_by_lane == list(RESUMED)
    if script == "sse-resume":
        assert resumed_by_lane == ["e1"] and lane_answer[0] == "result"


async def test_a_redirect_is_left_to_the_sdk_and_turns_the_lane_off() -> None:
    async with scripted() as base:
        lane = HttpLane(f"{base}/moved", {})
        body = enveloped(VERSION, {"name": "t", "arguments": {}}, {}, None)
        try:
            with pytest.raises(Redirected):
                await lane.request("tools/call", body, headers={}, timeout=10)
        finally:
            await lane.close()
        assert lane.usable is False
        sdk_answer, _ = await _through_sdk(f"{base}/moved")
        assert sdk_answer[0] == "error" and sdk_answer[1][0] == jsonrpc.INVALID_REQUEST


async def test_a_question_on_the_stream_is_answered_with_a_post_of_the_session() -> None:
    async def on_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"roots": [{"uri": f"file:///{method}"}]}

    async with scripted() as base:
        lane = HttpLane(f"{base}/ask", {"x-token": "t"})
        body = enveloped(VERSION, {"name": "t", "arguments": {}}, {}, None)
        try:
            with anyio.fail_after(10):
                raw = await lane.request(
                    "tools/call",
                    body,
                    headers={**hop_headers(VERSION, "tools/call", body, {}), "mcp-session-id": "s-9"},
                    timeout=10,
                    on_request=on_request,
                )
        finally:
            await lane.close()
    assert msgspec.json.decode(raw) == RESULT
    assert ASKED["answer"] == {"jsonrpc": "2.0", "id": "s1", "result": {"roots": [{"uri": "file:///roots/list"}]}}
    sent = ASKED["headers"]
    assert sent["mcp-session-id"] == "s-9" and sent["x-token"] == "t"
    assert "mcp-method" not in sent and "mcp-name" not in sent  # an answer is no tools/call


async def test_not_found_on_a_session_means_the_session_ended() -> None:
    async with scripted() as base:
        lane = HttpLane(f"{base}/not-found", {})
        try:
            with pytest.raises(MCPError) as caught:
                await lane.request("tools/call", {}, headers={"mcp-session-id": "gone"}, timeout=10)
        finally:
            await lane.close()
    # What the SDK's transport says for a 404 once it has a session id.
    assert (caught.value.error.code, caught.value.error.message) == (jsonrpc.INVALID_REQUEST, "Session terminated")


async def test_a_body_past_the_limit_is_refused() -> None:
    async with scripted() as base:
        lane = HttpLane(f"{base}/json", {}, limit=16)
        try:
            with pytest.raises(MCPError) as caught:
                await lane.request("tools/call", {}, headers={}, timeout=10)
        finally:
            await lane.close()
        assert caught.value.error.code == jsonrpc.PAYLOAD_TOO_LARGE


# -- the event-stream parser ------------------------------------------------------------------
STREAM = (
    ": comment\r\n"
    "retry: 250\n"
    "id: 7\n"
    "data: first\n"
    "data: second\r\n"
    "\r\n"
    "event: other\r"
    'data: {"a": 1}\r'
    "\r"
    "data:no-space\n"
    "id\n"
    "\n"
    "data: \n"
    "\n"
    "\n"
    "data: tail\n\n"
)


def _oracle(text: str) -> list[tuple[str, str]]:
    parser = _SSEParser()
    events = [*parser.decode(text), *parser.flush()]
    return [(event.event, event.data) for event in events if event.data]  # (a priming event has none)


@pytest.mark.parametrize("seed", range(20))
def test_the_event_stream_parser_agrees_with_httpx2_for_any_split(seed: int) -> None:
    data = STREAM.encode()
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), 12))
    stream = EventStream(1 << 20)
    events = []
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        events += stream.feed(data[start:stop])
    assert [(e.type, e.data.decode()) for e in events if e.data] == _oracle(STREAM)  # empty: skipped by both
    assert stream.retry == 250


def test_the_event_stream_parser_bounds_a_pending_event() -> None:
    stream = EventStream(64)
    stream.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(EventTooLarge):
        stream.feed(b"data: " + b"y" * 40)


def test_the_event_stream_parser_is_linear_in_a_large_event() -> None:
    """Ten thousand pieces of one 10 MB event: each byte searched once (a quadratic scan would take minutes)."""
    stream = EventStream(1 << 30)
    piece = b"x" * 1000
    assert stream.feed(b"data: ") == []
    for _ in range(10_000):
        assert stream.feed(piece) == []
    (event,) = stream.feed(b"\n\n")
    assert len(event.data) == 10_000_000
