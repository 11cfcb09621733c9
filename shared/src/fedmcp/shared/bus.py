"""Connecting a service to NATS with the options every fedmcp service wants."""

from __future__ import annotations

from typing import Any

import nats
import structlog
from fedmcp.shared import metrics
from nats.aio.client import Client as NATS

log = structlog.get_logger("fedmcp.bus")


async def connect(url: str, *, name: str, **options: Any) -> NATS:
    service = name.split("-")[0]

    async def error_cb(exc: Exception) -> None:
        metrics.BUS_ERRORS.labels(service).inc()
        log.warning("nats error", error=str(exc))

    async def disconnected_cb() -> None:
        log.warning("nats disconnected")

    async def reconnected_cb() -> None:
        metrics.BUS_RECONNECTS.labels(service).inc()
        log.info("nats reconnected")

    settings: dict[str, Any] = {
        "name": name,
        "connect_timeout": 5,
        "reconnect_time_wait": 0.5,
        "max_reconnect_attempts": -1,
        # A dead link is noticed in seconds, not the default four minutes.
        "ping_interval": 10,
        "max_outstanding_pings": 3,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
    }
    settings.update(options)
    return await nats.connect(url.split(","), **settings)
