"""The edge's HTTP protocol (http_protocol.py): a response's head and body leave in one write, and
nothing else changes: streamed bodies arrive whole and in order, a closing response is sent before
the connection closes, and uvicorn's own answers (a bad request) still go out."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest
from fedmcp.edge.http_protocol import CoalescingHttpToolsProtocol
from fedmcp.shared.ops_http import bind, serve_asgi
from starlette.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

WRITES: list[bytes] = []
"""What the connections' real transports were given, one entry per write call."""


class _Counted:
    """The real transport, its write calls recorded."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def writelines(self, pieces: Any) -> None:
        WRITES.append(b"".join(pieces))
        self._transport.writelines(pieces)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CountedProtocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Counted(transport))  # type: ignore[arg-type]


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/json":
        body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(3):
            if n:
                await anyio.lowlevel.checkpoint()  # the later events in loop iterations of their own
            await send({"type": "http.response.body", "body": b"data: %d\r\n\r\n" % n, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif scope["path"] == "/close":
        body = b"bye"
        head = [(b"content-length", b"3"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def _server() -> AsyncIterator[str]:
    sock = bind("127.0.0.1", 0)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_asgi(_app, sock, stop=stop, http=_CountedProtocol))
        # The socket listens from `bind` on: a request made before uvicorn serves waits in the backlog.
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        stop.set()


async def test_a_json_answer_leaves_in_one_write() -> None:
    async with _server() as url, httpx2.AsyncClient(timeout=5) as http:
        WRITES.clear()
        response = await http.get(url + "/json")
    assert response.status_code == 200 and response.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert len(WRITES) == 1
    assert WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n") and WRITES[0].endswith(b'"result":{}}')


async def test_a_streamed_body_arrives_whole_and_in_order() -> None:
    async with _server() as url, httpx2.AsyncClient(timeout=5) as http:
        WRITES.clear()
        response = await http.get(url + "/stream")
    assert response.text == "data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"
    # What is written in one loop iteration leaves together: the head with the first event, the last
    # event with the end of the chunked body.
    assert [w.split(b"\r\n\r\n", 1)[-1] if w.startswith(b"HTTP/") else w for w in WRITES] == [
        b"b\r\ndata: 0\r\n\r\n\r\n",
        b"b\r\ndata: 1\r\n\r\n\r\n",
        b"b\r\ndata: 2\r\n\r\n\r\n0\r\n\r\n",
    ]


async def _exchange(url: str, request: bytes) -> bytes:
    """Everything the server sends for `request` on a raw connection, until it closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(request)
        received = b""
        while chunk := await anyio.to_thread.run_sync(raw.recv, 65536):
            received += chunk
    return received


async def test_a_closing_answer_is_sent_before_the_connection_closes() -> None:
    async with _server() as url:
        received = await _exchange(url, b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nbye")


async def test_uvicorns_own_answer_to_a_bad_request_still_goes_out() -> None:
    async with _server() as url:
        received = await _exchange(url, b"NOT HTTP AT ALL\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
