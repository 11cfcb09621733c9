"""A client's cancel crosses the bus and cancels the backing request; races end cleanly."""

from __future__ import annotations

import anyio
import pytest
from conftest import federation, probe_saw_cancel, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio
MODES = ["legacy", "2026-07-28"]


@pytest.mark.parametrize("mode", MODES)
async def test_client_cancel_reaches_the_backing_server(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            sleeping = anyio.Event()

            async def started(progress: float, total: float | None, message: str | None) -> None:
                sleeping.set()

            with anyio.move_on_after(10) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: client.call_tool("probe_sleep", {"seconds": 30}, progress_callback=started))
                    await sleeping.wait()  # the backing server is in the call
                    tg.cancel_scope.cancel()  # the client abandons the call
            assert not scope.cancelled_caught
            await probe_saw_cancel(client, 30.0)
        assert adapter._scopes == {}


@pytest.mark.parametrize("mode", MODES)
async def test_answer_and_cancel_crossing_ends_cleanly(nats_server: NatsServer, mode: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
            for delay in (0.0, 0.01, 0.02, 0.05):
                with anyio.move_on_after(0.05):
                    await client.call_tool("probe_sleep", {"seconds": delay})
            # The session survived every race and still works.
            result = await client.call_tool("probe_sleep", {"seconds": 0})
            assert result.structured_content == {"result": "slept 0.0"}
