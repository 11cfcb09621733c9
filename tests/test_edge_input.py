"""Bad input at the edge gets the spec's JSON-RPC code and HTTP status, and the edge keeps serving."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from conftest import demo_server, federation
from fedmcp.edge.guard import RequestGuard, sdk_security, transport_security
from fedmcp.edge.http import serve_http
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.ops_http import bind
from mcp import Client

pytestmark = pytest.mark.anyio

MODERN_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/list",
}
LEGACY_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def error_code(response: httpx2.Response) -> int | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


async def assert_still_serving(url: str) -> None:
    async with Client(url) as client:
        result = await client.call_tool("demo_echo", {"text": "still here"})
        assert result.structured_content == {"result": "still here"}


@pytest.mark.parametrize("headers", [MODERN_HEADERS, LEGACY_HEADERS], ids=["modern", "legacy"])
async def test_malformed_json(nats_server: NatsServer, headers: dict[str, str]) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=headers)
        assert response.status_code == 400
        assert error_code(response) == jsonrpc.PARSE_ERROR
        assert "Traceback" not in response.text
        await assert_still_serving(fed.url)


@pytest.mark.parametrize("headers", [MODERN_HEADERS, LEGACY_HEADERS], ids=["modern", "legacy"])
async def test_wrong_jsonrpc_shape(nats_server: NatsServer, headers: dict[str, str]) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, json={"jsonrpc": "1.0", "method": 42, "id": {"x": 1}}, headers=headers)
        assert response.status_code == 400
        assert error_code(response) == jsonrpc.INVALID_REQUEST
        assert "Traceback" not in response.text
        await assert_still_serving(fed.url)


async def test_oversize_body(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        big = (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo_echo","arguments":{"text":"'
            + (b"x" * (2 * 1024 * 1024))
            + b'"}}}'
        )
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, content=big, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call"})
        assert response.status_code == 413
        assert error_code(response) == jsonrpc.INVALID_REQUEST
        await assert_still_serving(fed.url)


async def test_modern_header_body_mismatch_is_400_32020(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "demo_echo",
                "arguments": {"text": "x"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(
                fed.url, json=body, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "demo_add"}
            )
            assert response.status_code == 400
            assert error_code(response) == -32020
            good = await http.post(
                fed.url, json=body, headers={**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "demo_echo"}
            )
            assert good.status_code == 200
            assert good.json()["result"]["structuredContent"] == {"result": "x"}


def nested(depth: int) -> bytes:
    """A tools/call whose arguments nest `depth` levels in all (the message object counts as one)."""
    inner = b"[" * (depth - 3) + b"]" * (depth - 3)
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo_echo","arguments":{"text":'
        + inner
        + b"}}}"
    )


@pytest.mark.parametrize("headers", [MODERN_HEADERS, LEGACY_HEADERS], ids=["modern", "legacy"])
async def test_nesting_depth_and_non_utf8(nats_server: NatsServer, headers: dict[str, str]) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        hdrs = {**headers, "Mcp-Method": "tools/call", "Mcp-Name": "demo_echo"} if "Mcp-Method" in headers else headers
        async with httpx2.AsyncClient(timeout=10) as http:
            for depth in (65, 1000, 200_000):
                response = await http.post(fed.url, content=nested(depth), headers=hdrs)
                assert response.status_code == 400
                assert error_code(response) == jsonrpc.INVALID_REQUEST
                assert "nested deeper than 64 levels" in response.json()["error"]["message"]
                assert response.json()["id"] is None and response.json()["jsonrpc"] == "2.0"
            at_limit = await http.post(fed.url, content=nested(64), headers=hdrs)
            assert "nested deeper" not in at_limit.text
            response = await http.post(
                fed.url, content=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff\xfe"}}', headers=hdrs
            )
            assert response.status_code == 400
            assert error_code(response) == jsonrpc.PARSE_ERROR
        await assert_still_serving(fed.url)


async def test_too_many_or_too_large_headers_are_431(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with httpx2.AsyncClient(timeout=10) as http:
            many = [*LEGACY_HEADERS.items(), *((f"x-extra-{i}", "v") for i in range(120))]
            response = await http.post(fed.url, json=ping, headers=many)
            assert response.status_code == 431
            assert error_code(response) == jsonrpc.INVALID_REQUEST
            response = await http.post(fed.url, json=ping, headers={**LEGACY_HEADERS, "x-big": "b" * 17_000})
            assert response.status_code == 431
            assert "16384 bytes of headers" in response.json()["error"]["message"]
            # Limits apply to every path, the operational ones too.
            assert (
                await http.get(fed.url.replace("/mcp", "/healthz"), headers={"x-big": "b" * 17_000})
            ).status_code == 431
        await assert_still_serving(fed.url)


async def test_origin_and_host_against_dns_rebinding(nats_server: NatsServer) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        port = fed.url.rsplit(":", 1)[1].split("/")[0]
        async with httpx2.AsyncClient(timeout=10) as http:
            # Bound to loopback: loopback origins only; checked before the body is even read.
            for origin in ("http://evil.example", "null", f"http://127.0.0.1.evil.example:{port}"):
                response = await http.post(fed.url, content=b"{", headers={**LEGACY_HEADERS, "Origin": origin})
                assert response.status_code == 403, origin
                assert error_code(response) == jsonrpc.INVALID_REQUEST
            ok = await http.post(fed.url, json=init, headers={**LEGACY_HEADERS, "Origin": f"http://localhost:{port}"})
            assert ok.status_code == 200
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1"):
                response = await http.post(fed.url, json=init, headers={**LEGACY_HEADERS, "Host": host})
                assert response.status_code == 421, host
                assert error_code(response) == jsonrpc.INVALID_REQUEST
            legacy_sse = fed.url.replace("/mcp", "/sse")
            assert (await http.get(legacy_sse, headers={"Origin": "http://evil.example"})).status_code == 403
            # Requests without an Origin (every non-browser client) pass.
            assert (await http.post(fed.url, json=init, headers=LEGACY_HEADERS)).status_code == 200

        # Allowed origins and hosts configured (what `fedmcp edge --allowed-origin/--allowed-host` pass).
        assert fed.edge is not None
        sock = bind("127.0.0.1", 0)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        stop = anyio.Event()
        fed.stops.append(stop)
        fed.tg.start_soon(
            lambda: serve_http(
                fed.edge,  # type: ignore[arg-type]
                sock,
                stop=stop,
                anonymous=True,
                allowed_origins=["https://app.example"],
                allowed_hosts=["127.0.0.1:*", "mcp.example"],
            )
        )
        async with httpx2.AsyncClient(timeout=10) as http:
            # The socket listens already: the first request waits in its backlog until serving starts.
            app = {**LEGACY_HEADERS, "Origin": "https://app.example"}
            assert (await http.post(url, json=init, headers=app)).status_code == 200
            assert (await http.post(url, json=init, headers={**app, "Host": "mcp.example"})).status_code == 200
            local = {**LEGACY_HEADERS, "Origin": "http://localhost:1"}
            assert (await http.post(url, json=init, headers=local)).status_code == 403
            assert (await http.post(url, json=init, headers={**app, "Host": "localhost:1"})).status_code == 421
        await assert_still_serving(url)


async def test_defaults_off_loopback_take_any_host_and_no_browser_origin() -> None:
    """Bound to a non-loopback address (behind a load balancer): any Host, no Origin unless allowed."""
    security = transport_security("10.0.0.5")
    assert security.allowed_hosts == ["*"] and security.allowed_origins == []
    assert sdk_security(security).enable_dns_rebinding_protection is False  # the SDK knows no "*": the guard decides
    assert (
        sdk_security(transport_security("127.0.0.1")).allowed_origins == transport_security("127.0.0.1").allowed_origins
    )

    answered: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        answered.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def status(guard: RequestGuard, headers: list[tuple[bytes, bytes]], path: str = "/mcp") -> int:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await guard({"type": "http", "path": path, "headers": headers, "method": "POST"}, receive, send)
        code: int = sent[0]["status"]
        return code

    guard = RequestGuard(app, paths=["/mcp"], security=security)
    assert await status(guard, [(b"host", b"mcp.public.example")]) == 200
    assert await status(guard, [(b"host", b"x"), (b"origin", b"https://app.example")]) == 403
    assert await status(guard, [(b"host", b"x"), (b"origin", b"https://app.example")], path="/metrics") == 200
    allowing = RequestGuard(app, paths=["/mcp"], security=transport_security("10.0.0.5", (), ["https://app.example"]))
    assert await status(allowing, [(b"host", b"x"), (b"origin", b"https://app.example")]) == 200
    assert await status(allowing, [(b"host", b"x"), (b"origin", b"https://other.example")]) == 403
