"""The services' bus connection (fedmcp.shared.bus): what it tells the operator about its link."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import structlog
from fedmcp.shared import bus
from fedmcp.shared.natsserver import NatsServer
from nats.aio.client import Client as NATS

pytestmark = pytest.mark.anyio


def _after_disconnect(nc: NATS) -> anyio.Event:
    """Set once the connection's own disconnect callback (the one under test) has run."""
    done = anyio.Event()
    logged = nc._disconnected_cb
    assert logged is not None

    async def cb() -> None:
        await logged()
        done.set()

    nc._disconnected_cb = cb
    return done


async def test_a_lost_server_is_a_warning_and_a_close_is_not(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        with structlog.testing.capture_logs() as logged:
            lost = await bus.connect(server.url, name="test-lost")
            closed = await bus.connect(server.url, name="test-closed")
            went = _after_disconnect(closed)
            await closed.close()  # what every service does when it stops
            with anyio.fail_after(10):
                await went.wait()
            assert [(e["log_level"], e["event"]) for e in logged] == [("info", "nats connection closed")]
            went = _after_disconnect(lost)
            server.stop()
            with anyio.fail_after(10):
                await went.wait()
            assert ("warning", "nats disconnected") in [(e["log_level"], e["event"]) for e in logged]
            await lost.close()
    finally:
        server.stop()
