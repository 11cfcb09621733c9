"""The adapter's express path (service.Adapter._express): a plain call to a stdio server served without
a task of its own answers exactly as the task path does, and cancels, times out and survives a crash."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from conftest import demo_server, federation, probe_saw_cancel, python_server
from fedmcp.adapter.service import Adapter
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio


@pytest.fixture
def express_calls(monkeypatch: pytest.MonkeyPatch, spans_off: None) -> Iterator[list[str]]:
    """The methods the express path took (a spy on the real `_express`)."""
    taken: list[str] = []
    real = Adapter._express

    def spy(self: Adapter, msg: Any) -> bool:
        took = real(self, msg)
        if took:
            taken.append(jsonrpc.decode_request(msg.data).method)
        return took

    monkeypatch.setattr(Adapter, "_express", spy)
    yield taken


async def _answers(client: Client) -> list[Any]:
    """One of each kind of answer: results, a tool's error, a JSON-RPC error."""
    out: list[Any] = []
    for name, args in (("demo_echo", {"text": "hi"}), ("demo_add", {"a": 2, "b": 3}), ("probe_fail", {"reason": "no"})):
        result = await client.call_tool(name, args)
        out.append(result.model_dump(exclude={"meta"}))
    out.append((await client.read_resource("notes://index")).model_dump(exclude={"meta"}))
    out.append((await client.get_prompt("demo_summarize", {"topic": "x"})).model_dump(exclude={"meta"}))
    try:
        await client.read_resource("notes://no/such/thing")
    except MCPError as exc:
        out.append((exc.error.code, exc.error.message))
    return out


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_express_calls_answer_as_the_task_path(
    nats_server: NatsServer, express_calls: list[str], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            express = await _answers(client)
            taken = list(express_calls)
            monkeypatch.setattr(Adapter, "_express", lambda self, msg: False)
            tasks = await _answers(client)
    assert express == tasks
    # (The unknown URI is answered by the edge: no server's templates match it.)
    assert taken == ["tools/call", "tools/call", "tools/call", "resources/read", "prompts/get"]


async def test_cancel_of_an_express_call_reaches_the_backing_server(
    nats_server: NatsServer, express_calls: list[str]
) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode="2026-07-28") as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: client.call_tool("probe_sleep", {"seconds": 30}))
                with anyio.fail_after(10):
                    await adapter.took_work.wait()  # set in the callback that wrote it to the server's stdin
                assert list(adapter._scopes) != []
                tg.cancel_scope.cancel()  # the client abandons the call
            await probe_saw_cancel(client, 30.0)
        assert express_calls[0] == "tools/call"
        assert adapter._scopes == {}
        assert adapter._inflight == 0


async def test_express_call_past_its_deadline_is_a_timeout_and_cancelled_at_the_server(
    nats_server: NatsServer, express_calls: list[str]
) -> None:
    async with federation(nats_server.url, request_timeout=1.0) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode="2026-07-28") as client:
            with pytest.raises(MCPError) as err:
                await client.call_tool("probe_sleep", {"seconds": 30})
            assert err.value.error.code == jsonrpc.UPSTREAM_TIMEOUT
            await probe_saw_cancel(client, 30.0)
        assert express_calls[0] == "tools/call"
        assert adapter._inflight == 0


async def test_backing_server_crash_during_an_express_call_is_unavailable_and_it_comes_back(
    nats_server: NatsServer, express_calls: list[str]
) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode="2026-07-28") as client:
            before = (await client.call_tool("probe_pid", {})).structured_content
            with pytest.raises(MCPError) as err:
                await client.call_tool("probe_crash", {})
            assert err.value.error.code == jsonrpc.UPSTREAM_UNAVAILABLE
            assert "unavailable (crashed)" in err.value.error.message
            with anyio.fail_after(20):
                while True:  # restarted by the adapter's supervisor
                    try:
                        after = (await client.call_tool("probe_pid", {})).structured_content
                        break
                    except MCPError:
                        await anyio.sleep(0.1)
        assert after != before
        assert express_calls[:2] == ["tools/call", "tools/call"]
        assert adapter._inflight == 0


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_log_messages_of_an_express_call_arrive_before_its_result(
    nats_server: NatsServer, express_calls: list[str], mode: str
) -> None:
    """The lane hands log lines on itself: a result it takes must not overtake them."""
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        levels: list[str] = []

        async def on_log(params: Any) -> None:
            levels.append(params.level)

        async with Client(fed.url, mode=mode, logging_callback=on_log, log_level="info") as client:  # type: ignore[arg-type]
            if mode == "legacy":  # a session-wide level in that era
                await client.set_logging_level("info")
            for _ in range(20):
                levels.clear()
                assert (await client.call_tool("probe_chatty", {})).structured_content == {"result": "logged"}
                assert levels == ["info", "warning", "error"]
    assert express_calls == ["tools/call"] * 20
