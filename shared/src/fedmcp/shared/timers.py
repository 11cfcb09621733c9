"""Waiting for an event with a time limit, cheaply enough for the per-call hot paths.

`anyio.move_on_after` makes a cancel scope per wait (a backend lookup, task-state bookkeeping on
enter and exit, and a repr of the task if it fires); a call waits once or twice, so on the edge
and the adapter that was a few percent of their CPU. A loop timer that sets the event does the
same for an event owned by one waiter.
"""

from __future__ import annotations

import asyncio

import anyio


async def wait_set(event: anyio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` seconds have passed. The event must be this waiter's
    own: when the time runs out it is set, and callers check what they waited for."""
    if event.is_set():
        return
    timer = asyncio.get_running_loop().call_later(max(timeout, 0.0), event.set)  # (nats-py runs on asyncio)
    try:
        await event.wait()
    finally:
        timer.cancel()
