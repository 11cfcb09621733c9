"""Every adapter and manager is also a NATS micro service, so operators find them with the
standard tools (`nats micro ls`, `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`)."""

from __future__ import annotations

import json
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.service import Service

ADAPTER = "fedmcp-adapter"
MANAGER = "fedmcp-manager"


async def register(nc: NATS, name: str, version: str, metadata: dict[str, str], description: str) -> Service:
    service: Service = await add_service(nc, name=name, version=version, description=description, metadata=metadata)
    return service


async def ping_all(nc: NATS, name: str, *, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Scatter `$SRV.PING.<name>` and gather answers until `expected` came in (or the timeout)."""
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []
    enough = anyio.Event()

    async def collect(msg: Any) -> None:
        answers.append(json.loads(msg.data))
        if len(answers) >= expected:
            enough.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        with anyio.move_on_after(timeout):
            await enough.wait()
    finally:
        await sub.unsubscribe()
    return answers
