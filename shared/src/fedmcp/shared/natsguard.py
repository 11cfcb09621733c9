"""Keeping a NATS connection readable when a publisher sends a malformed header block.

nats-py 2.16 parses every message's headers inside the connection's read loop. A header block
that nats-server passes on but nats-py cannot parse (`NATS/1.0` with no line end, a status
line that is not UTF-8) raises there (IndexError, UnicodeDecodeError), the read loop logs it and
stops, and the connection hears nothing more until its ping timer declares it stale and
reconnects (about 30 s with the bus's settings), losing the calls in flight. Any client allowed
to publish on a subject the service listens on could do that at will.

`harden(nc)` makes such a block read as "no headers": the message is still delivered, and a
service answers it as it answers any request without the bus headers.

It also mends the same failure from the client's side: a `flush()` that times out or is cancelled
leaves its cancelled future first in line for the next PONG, whose `set_result` then raises
InvalidStateError in the read loop, with the same effect.
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

    async def process_pong() -> None:
        # nats-py's own, except that a flush which gave up no longer breaks the loop.
        if nc._pongs:
            future = nc._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            nc._pongs_received += 1
            nc._pings_outstanding = 0

    process_headers.fedmcp_hardened = True  # type: ignore[attr-defined]
    nc._process_headers = process_headers  # type: ignore[method-assign]
    nc._process_pong = process_pong  # type: ignore[method-assign]
    return nc
