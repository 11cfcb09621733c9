"""Services as separate OS processes: starting, stopping, and waiting for them from tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
from mcp import Client


class Proc:
    def __init__(self, args: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.p = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
        return self.p.wait()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus series (labels given must match; others may be present)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no series {name} {labels}")


def fedmcp(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmcp.cli.main", *args]


async def wait_for_tools(url: str, expected: set[str], mode: str = "auto", timeout: float = 30) -> None:
    """Poll the edge until its catalog shows `expected` (the processes start independently)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
                    if expected <= {t.name for t in (await client.list_tools()).tools}:
                        return
            except Exception:  # the edge may not listen yet
                pass
            await anyio.sleep(0.2)
