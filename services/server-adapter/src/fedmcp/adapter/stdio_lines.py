"""Linear-time reading of long lines from a stdio backing server.

The SDK's stdio client (mcp 2.3, `mcp/client/stdio.py:stdout_reader`) rebuilds
`buffer + chunk` and splits it on every read of the server's stdout, so a line
that arrives in n reads is copied n times: a 50 MB result took 25 s and one CPU.
`install()` hands that reader whole lines instead (whatever a read brings, held
back until it holds a line end), so its buffer stays short and each byte is
copied a bounded number of times. Messages are unchanged; only read sizes differ,
except the lines answering the process's raw lane (raw_lane.py), which are taken out.
"""

from __future__ import annotations

from typing import Any

import mcp.client.stdio as sdk_stdio
from anyio import EndOfStream
from anyio.abc import ByteReceiveStream
from fedmcp.adapter.raw_lane import OPENED, RawLane

READ_SIZE = 65536


class WholeLines(ByteReceiveStream):
    def __init__(self, inner: ByteReceiveStream, lane: RawLane | None = None) -> None:
        self.inner = inner
        self.lane = lane
        self._held = bytearray()

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            lines = await self._lines(max_bytes)
            if self.lane is not None:
                lines = self.lane.take(lines)
            if lines:
                return lines

    async def _lines(self, max_bytes: int) -> bytes:
        while True:
            try:
                chunk = await self.inner.receive(max(max_bytes, READ_SIZE))
            except EndOfStream:
                if self.lane is not None:
                    self.lane.close()
                if self._held:
                    return self._take()
                raise
            if b"\n" in chunk:
                if not self._held:
                    return chunk
                self._held += chunk
                return self._take()
            self._held += chunk

    def _take(self) -> bytes:
        out = bytes(self._held)
        self._held.clear()
        return out

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Process:
    """The SDK's process handle with stdout read in whole lines, and a raw lane on its pipes;
    everything else as it was."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.lane = RawLane(process.stdin) if process.stdin is not None else None
        self.stdout = WholeLines(process.stdout, self.lane) if process.stdout is not None else None
        opened = OPENED.get()
        if opened is not None and self.lane is not None:
            opened(self.lane)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._process, name)


_installed = False


def install() -> None:
    """Wrap the processes the SDK's stdio client spawns (idempotent)."""
    global _installed
    if _installed:
        return
    spawn = sdk_stdio._create_platform_compatible_process

    async def spawn_whole_lines(*args: Any, **kwargs: Any) -> Any:
        return _Process(await spawn(*args, **kwargs))

    sdk_stdio._create_platform_compatible_process = spawn_whole_lines
    _installed = True
