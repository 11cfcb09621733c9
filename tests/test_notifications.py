"""Request-scoped notifications cross the federation: progress and log messages, both eras."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import federation, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio
MODES = ["legacy", "2026-07-28"]


@pytest.mark.parametrize("mode", MODES)
async def test_progress_reaches_the_caller_with_its_own_token(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            result = await client.call_tool("probe_count", {"steps": 3}, progress_callback=on_progress)
            assert result.structured_content == {"result": "counted 3"}
            assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", MODES)
async def test_progress_goes_only_to_the_client_that_asked(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        mine: list[float] = []
        theirs: list[float] = []

        async def on_mine(progress: float, total: float | None, message: str | None) -> None:
            mine.append(progress)

        async def on_theirs(progress: float, total: float | None, message: str | None) -> None:
            theirs.append(progress)

        async with (
            Client(fed.url, mode=mode) as a,  # type: ignore[arg-type]
            Client(fed.url, mode=mode) as b,  # type: ignore[arg-type]
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(lambda: a.call_tool("probe_count", {"steps": 5}, progress_callback=on_mine))
            tg.start_soon(lambda: b.call_tool("probe_count", {"steps": 2}, progress_callback=on_theirs))
        assert mine == [1, 2, 3, 4, 5]
        assert theirs == [1, 2]


async def test_legacy_log_messages_follow_set_level(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        messages: list[tuple[str, Any]] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            messages.append((params.level, params.data))

        async with Client(fed.url, mode="legacy", logging_callback=on_log) as client:
            await client.call_tool("probe_chatty", {})
            assert [lvl for lvl, _ in messages] == ["debug", "info", "warning", "error"]
            messages.clear()
            await client.set_logging_level("warning")
            await client.call_tool("probe_chatty", {})
            assert messages == [("warning", "a warning line"), ("error", "an error line")]


async def test_modern_log_messages_only_when_the_request_opts_in(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        messages: list[str] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            messages.append(params.level)

        async with Client(fed.url, mode="2026-07-28", logging_callback=on_log) as quiet:
            await quiet.call_tool("probe_chatty", {})
        assert messages == []
        async with Client(fed.url, mode="2026-07-28", logging_callback=on_log, log_level="info") as loud:
            await loud.call_tool("probe_chatty", {})
        assert messages == ["info", "warning", "error"]
