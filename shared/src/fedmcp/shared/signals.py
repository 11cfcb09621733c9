"""Turning SIGTERM and SIGINT into a graceful stop."""

from __future__ import annotations

import signal

import anyio


async def stop_on_signals(stop: anyio.Event) -> None:
    """Set `stop` at the first SIGTERM or SIGINT; a second one is left to the default handler."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
