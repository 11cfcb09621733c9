"""Connecting a service to NATS with the options every fedmcp service wants."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import nats
import structlog
from fedmcp.shared import metrics, natsguard, tls
from nats.aio.client import Client as NATS

log = structlog.get_logger("fedmcp.bus")

INBOX_PREFIX_ENV = "FEDMCP_NATS_INBOX_PREFIX"
"""Where the client's reply inboxes live (nats-py's default is `_INBOX`). A NATS user with
per-role permissions may subscribe only to its own inboxes (deploy/nats/accounts.conf gives
user U `_INBOX.U.>`), so set it to `_INBOX.U`, or to `_INBOX.{user}`: `{user}` is the user
name in the NATS URL. Unset: nats-py's default, as before."""
_PREFIX = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")


def inbox_prefix(url: str) -> str | None:
    """The inbox prefix `FEDMCP_NATS_INBOX_PREFIX` asks for (None: nats-py's default)."""
    template = os.environ.get(INBOX_PREFIX_ENV, "")
    if not template:
        return None
    if "{user}" in template:
        user = urlsplit(url.split(",")[0].strip()).username
        if not user:
            raise ValueError(f"{INBOX_PREFIX_ENV}={template!r} needs a user name in the NATS URL")
        template = template.replace("{user}", user)
    if not _PREFIX.match(template):
        raise ValueError(f"{INBOX_PREFIX_ENV}={template!r} is not a subject without wildcards")
    return template


async def connect(url: str, *, name: str, **options: Any) -> NATS:
    """Connect to `url` (comma-separated servers). TLS comes from the environment
    (`FEDMCP_NATS_TLS_*`, see fedmcp.shared.tls) or a `tls://` URL; `options` override all."""
    service = name.split("-")[0]

    async def error_cb(exc: Exception) -> None:
        metrics.BUS_ERRORS.labels(service).inc()
        log.warning("nats error", error=str(exc))

    connected: list[NATS] = []

    async def disconnected_cb() -> None:
        # nats-py calls this for a close() or a drain too; only a lost link is worth a warning.
        if connected and connected[0].is_closed:
            log.info("nats connection closed")
        else:
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
    prefix = inbox_prefix(url)
    if prefix is not None:
        settings["inbox_prefix"] = prefix
    secure = tls.nats_tls_from_env(url)
    if secure is not None:
        settings.update(secure.options())
    settings.update(options)
    if settings.get("allow_reconnect") is False and "max_reconnect_attempts" not in options:
        # A one-shot connection (the CLI's) gives up on a server after a second try: nats-py applies
        # the reconnect budget to the first connect too (and reads 0 as no limit), so with the
        # services' unlimited one a wrong URL would make `fedmcp ls` wait forever.
        settings["max_reconnect_attempts"] = 1
    # Every service's connection gets the guard: a malformed header block from any publisher, or a
    # flush that gave up, must not stop its read loop (see natsguard).
    if settings.get("tls") is None:
        nc = await nats.connect(url.split(","), **settings)
    else:
        nc = _TlsOnlyClient()
        await nc.connect(url.split(","), **settings)
    connected.append(nc)
    return natsguard.harden(nc)


class _TlsOnlyClient(NATS):
    """A client that speaks to no server without TLS once TLS is configured.

    nats-py upgrades a connection only when the server's INFO says `tls_required`, also for a
    `tls://` URL, so a plaintext server (or anyone between, rewriting INFO) would get the CONNECT
    and its credentials in the clear. Here every INFO counts as requiring TLS: a plaintext
    server fails the handshake instead."""

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        info["tls_required"] = True
        await super()._process_info(info, initial_connection)
