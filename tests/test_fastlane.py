"""The edge's fast lane (fastlane.py): a plain 2026-07-28 tools/call is served without the SDK's server,
and answered byte for byte as the SDK path answers the same call; anything unusual goes to the SDK."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import demo_server, federation, python_server
from fedmcp.edge import fastlane
from fedmcp.edge.fastlane import FastLane
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp_types import LOG_LEVEL_META_KEY

pytestmark = pytest.mark.anyio

ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def call(name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments, "_meta": {**ENVELOPE, **meta}}
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}


def headers(name: str, **extra: str) -> dict[str, str]:
    return {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
        **extra,
    }


@pytest.fixture
def lane_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tools the fast lane served (a spy on its real `_serve`)."""
    served: list[str] = []
    serve = FastLane._serve

    async def spy(self: FastLane, plan: Any, *args: Any) -> None:
        served.append(plan.name)
        await serve(self, plan, *args)

    monkeypatch.setattr(FastLane, "_serve", spy)
    return served


async def test_plain_call_takes_the_lane_and_answers_as_the_sdk_path(
    nats_server: NatsServer, lane_calls: list[str]
) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        async with httpx2.AsyncClient(timeout=10) as http:
            for arguments in ({"text": "hello"}, {"text": 3}):  # a result, and the backing server's tool error
                fast = await http.post(fed.url, json=call("demo_echo", arguments), headers=headers("demo_echo"))
                assert lane_calls[-1:] == ["demo_echo"]
                # A progress token is not the lane's: the same call through the SDK's server.
                slow = await http.post(
                    fed.url, json=call("demo_echo", arguments, progressToken="p1"), headers=headers("demo_echo")
                )
                assert len(lane_calls) == 1 + (arguments["text"] == 3)
                assert (fast.status_code, slow.status_code) == (200, 200)
                assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
                assert fast.json() == slow.json()
            assert fast.json()["result"]["isError"] is True
            result = (
                await http.post(fed.url, json=call("demo_echo", {"text": "hi"}), headers=headers("demo_echo"))
            ).json()
            assert result["result"]["structuredContent"] == {"result": "hi"}
            assert result["result"]["resultType"] == "complete"
            assert result["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "fedmcp"
        async with Client(fed.url, mode="2026-07-28") as client:  # the SDK's own client takes the lane too
            assert (await client.call_tool("demo_add", {"a": 2, "b": 3})).structured_content == {"result": 5}
        assert lane_calls[-1] == "demo_add"


@pytest.mark.parametrize(
    ("body", "extra", "status", "code"),
    [
        (call("nope_missing", {}), {}, 400, -32602),  # unknown tool: the SDK path's error
        (call("demo_echo", {"text": "x"}), {"Mcp-Name": "demo_add"}, 400, -32020),  # header disagrees with body
        (call("demo_echo", {"text": "x"}, **{LOG_LEVEL_META_KEY: "debug"}), {}, 200, None),  # asks for logs
        ({**call("demo_echo", {"text": "x"}), "params": {"name": "demo_echo"}}, {}, 400, -32602),  # no envelope
    ],
    ids=["unknown-tool", "header-mismatch", "log-level", "no-envelope"],
)
async def test_anything_unusual_is_left_to_the_sdk(
    nats_server: NatsServer,
    lane_calls: list[str],
    body: dict[str, Any],
    extra: dict[str, str],
    status: int,
    code: int | None,
) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        name = body["params"]["name"]
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, json=body, headers={**headers(name), **extra})
        assert lane_calls == []
        assert response.status_code == status
        if code is None:
            assert "result" in response.json()
        else:
            assert response.json()["error"]["code"] == code


async def test_a_long_call_streams_pings_then_its_result(
    nats_server: NatsServer, lane_calls: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fastlane, "PING_INTERVAL", 0.1)
    async with federation(nats_server.url) as fed:
        await fed.add_server("ledger", python_server("ledger.py", env={"LEDGER": str(tmp_path / "ledger.txt")}))
        body = call("ledger_balance", {"seconds": 0.5})
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(fed.url, json=body, headers=headers("ledger_balance"))
        assert lane_calls == ["ledger_balance"]
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        frames = response.text.split("\r\n\r\n")
        assert frames[0] == ": ping"
        assert frames[-2].startswith("event: message\r\ndata: ")
        assert '"structuredContent":{"result":"42"}' in frames[-2]


async def test_closing_the_connection_cancels_the_call(
    nats_server: NatsServer, lane_calls: list[str], tmp_path: Path
) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server(
            "ledger", python_server("ledger.py", env={"LEDGER": str(tmp_path / "ledger.txt")})
        )
        async with httpx2.AsyncClient(timeout=10) as http:
            with anyio.move_on_after(1):
                await http.post(
                    fed.url, json=call("ledger_balance", {"seconds": 30}), headers=headers("ledger_balance")
                )
        assert lane_calls == ["ledger_balance"]
        assert adapter._inflight == 1
        with anyio.fail_after(10):  # far short of the call's 30 s: the adapter dropped it on the edge's cancel
            await adapter._idle.wait()
        assert adapter._inflight == 0


def read(uri: str, **meta: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "resources/read",
        "params": {"uri": uri, "_meta": {**ENVELOPE, **meta}},
    }


@pytest.mark.parametrize("size", [1000, 3_000_000], ids=["small", "large-raw"])
async def test_reads_take_the_lane_and_answer_as_the_sdk_path(
    nats_server: NatsServer, lane_calls: list[str], size: int
) -> None:
    async with federation(nats_server.url, max_body_bytes=16 * 1024 * 1024) as fed:
        await fed.add_server("big", python_server("big.py"))
        uri = f"big://blob/{size}"
        async with httpx2.AsyncClient(timeout=30) as http:
            fast = await http.post(fed.url, json=read(uri), headers=headers(uri, **{"Mcp-Method": "resources/read"}))
            assert lane_calls == [uri]
            slow = await http.post(
                fed.url, json=read(uri, progressToken="p"), headers=headers(uri, **{"Mcp-Method": "resources/read"})
            )
            assert lane_calls == [uri]
        assert (fast.status_code, slow.status_code) == (200, 200)
        assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
        assert int(fast.headers["content-length"]) == len(fast.content)
        assert fast.json() == slow.json()
        result = fast.json()["result"]
        assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == ("complete", 0, "private")
        assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "fedmcp"
        assert len(base64.b64decode(result["contents"][0]["blob"])) == size
