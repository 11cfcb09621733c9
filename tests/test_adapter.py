"""The adapter's contract with its backing server: environment, HTTP headers, drain, eviction."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import pytest
from conftest import federation, http_server, python_server
from fedmcp.shared.config import BackingServer
from fedmcp.shared.natsserver import NatsServer
from mcp import Client

pytestmark = pytest.mark.anyio


@pytest.fixture
def http_probe() -> Iterator[str]:
    """probe_server.py over Streamable HTTP on a free loopback port."""
    with http_server("probe_server.py") as url:
        yield url


async def test_configured_env_reaches_stdio_server_but_not_the_rest(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMCP_SECRET_OF_ADAPTER", "must-not-leak")
    async with federation(nats_server.url) as fed:
        await fed.add_server("probe", python_server("probe_server.py", env={"PROBE_COLOUR": "teal"}))
        async with Client(fed.url) as client:
            assert (await client.call_tool("probe_env", {"name": "PROBE_COLOUR"})).structured_content == {
                "result": "teal"
            }
            leaked = await client.call_tool("probe_env", {"name": "FEDMCP_SECRET_OF_ADAPTER"})
            assert leaked.structured_content == {"result": ""}
            # PATH comes from the SDK's safe default environment.
            path = await client.call_tool("probe_env", {"name": "PATH"})
            assert path.structured_content and path.structured_content["result"]


async def test_http_backing_server_with_configured_headers(nats_server: NatsServer, http_probe: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_http_server("remote", BackingServer(url=http_probe, headers={"X-Probe-Token": "abc123"}))
        for mode in ("legacy", "2026-07-28"):
            async with Client(fed.url, mode=mode) as client:  # type: ignore[arg-type]
                result = await client.call_tool("remote_header", {"name": "X-Probe-Token"})
                assert result.structured_content == {"result": "abc123"}
        assert fed.edge is not None
        assert fed.edge.view.table.servers["remote"].catalog.protocol_version == "2026-07-28"


async def test_drain_answers_in_flight_calls_before_closing_the_pipe(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py"))
        async with Client(fed.url) as client, anyio.create_task_group() as tg:
            results: list[object] = []

            async def slow_call() -> None:
                results.append((await client.call_tool("probe_sleep", {"seconds": 1.0})).structured_content)

            tg.start_soon(slow_call)
            with anyio.fail_after(5):
                await adapter.took_work.wait()
            adapter.stop()
        assert results == [{"result": "slept 1.0"}]
        await fed.wait_for_server("probe", present=False)


async def test_silent_adapter_is_evicted_and_clients_see_the_change(nats_server: NatsServer) -> None:
    async with federation(nats_server.url, evict_after=1.5) as fed:
        await fed.add_server("probe", python_server("probe_server.py"))
        proc = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "fedmcp.adapter.main",
                "--nats-url",
                nats_server.url,
                "--name",
                "doomed",
                "--heartbeat",
                "0.5",
                "--server-json",
                f'{{"command": "{sys.executable}", "args": ["-m", "fedmcp.demo_server.server"]}}',
            ],
            stdout=None,
            stderr=None,
        )
        try:
            await fed.wait_for_server("doomed", present=True)
            proc.kill()  # no goodbye: only missed heartbeats tell
            await proc.wait()
            await fed.wait_for_server("doomed", present=False, timeout=10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        async with Client(fed.url) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "doomed_add" not in names and "probe_pid" in names


async def test_a_pool_of_backing_sessions_shares_the_load(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        adapter = await fed.add_server("probe", python_server("probe_server.py", pool=2))
        with anyio.fail_after(20):
            for session in adapter.backend.extra:
                await session.wait_ready()
        pids: list[object] = []
        async with Client(fed.url) as client, anyio.create_task_group() as tg:

            async def slow_pid() -> None:
                pids.append((await client.call_tool("probe_slow_pid", {"seconds": 0.5})).structured_content)

            tg.start_soon(slow_pid)
            tg.start_soon(slow_pid)
        # Two calls at once went to the two sessions (two processes), not both to one.
        assert len(pids) == 2 and pids[0] != pids[1]
