"""Keeping a NATS connection readable when a publisher sends a malformed header block.

nats-py 2.16 parses every message's headers inside the connection's read loop. A header block
that nats-server passes on but nats-py cannot parse (`NATS/1.0` with no line end, a status
line that is not UTF-8) raises there (IndexError, UnicodeDecodeError), the read loop logs it and
stops, and the connection hears nothing more until its ping timer declares it stale and
reconnects (about 30 s with the bus's settings), losing the calls in flight. Any client allowed
to publish on a subject the service listens on could do that at will.

`harden(nc)` makes such a block read as "no headers": the message is still delivered, and a
service answers it as it answers any request without the bus headers.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.client import Client as NATS

log = structlog.get_logger("fedmcp.bus")


def harden(nc: NATS) -> NATS:
    """Apply the guard to one connection (idempotent); returns it."""
    original = nc._process_headers
    if getattr(original, "fedmcp_hardened", False):
        return nc

    async def process_headers(headers: Any) -> dict[str, str] | None:
        try:
            parsed: dict[str, str] | None = await original(headers)
        except Exception as exc:
            log.warning("ignored a malformed NATS header block", error=repr(exc), size=len(headers or b""))
            return None
        return parsed

    process_headers.fedmcp_hardened = True  # type: ignore[attr-defined]
    nc._process_headers = process_headers  # type: ignore[method-assign]
    return nc
