"""NATS header names of the bus protocol and the checks made on them."""

from __future__ import annotations

import time
from collections.abc import Mapping

from fedmcp.shared import BUS_PROTOCOL_VERSION

BUS = "Fedmcp-Bus"
"""Bus protocol version of the sender; a receiver that cannot read it answers an error."""
KIND = "Fedmcp-Kind"
"""Frame kind on a reply stream: one of `Kind`'s values."""
INSTANCE = "Fedmcp-Instance"
"""Adapter instance that accepted or answered a request."""
ACCEPT_BY = "Fedmcp-Accept-By"
"""Unix ms after which an adapter must not take the request: the edge has retried elsewhere."""
DEADLINE = "Fedmcp-Deadline"
"""Absolute deadline of a request in Unix milliseconds; later work is dropped."""
FRONT_VERSION = "Fedmcp-Front-Version"
"""MCP protocol version the client speaks at the edge."""
SESSION = "Fedmcp-Session"
"""The front session a request belongs to, sent only to servers with `affinity = "session"`: the
adapter serves it on that front session's own backing session (opened by the first request, on
the queue-group subject; later requests go to the holding instance's pinned subject)."""
CLIENT_CAPABILITIES = "Fedmcp-Client-Capabilities"
"""The front client's capabilities (JSON): what the backing server may ask of it."""
LOG_LEVEL = "Fedmcp-Log-Level"
"""Lowest log level the client wants for this request; absent = no log messages."""
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


UPLOAD = "Fedmcp-Upload"
"""On a request whose body did not fit one message: its size in bytes. The body is empty; the
adapter that takes the request pulls the pieces from the request's reply subject."""
CHUNK_INDEX = "Fedmcp-Chunk-Index"
"""On a `pull` frame: which piece of the upload is wanted."""
SIZE = "Fedmcp-Size"
"""On `chunk` frames: the size in bytes of the whole message they begin, so that the receiver holds it
in one buffer of that size from the first chunk on (no buffer grown and copied chunk by chunk)."""
REPLY_TO = "Fedmcp-Reply-To"
"""On an answer to a server-to-client request: where the rest of the call's frames go now
(a client's retry may reach another edge than the one that asked)."""
IDENTITY = "Fedmcp-Identity"
"""The caller, as an edge-signed assertion for the target server (shared/identity.py)."""
EVENT_ID = "Fedmcp-Event-Id"
"""On an adapter's event (a resource update): unique per event, so the edges that all republish it
into the session feed store it once."""
IDEMPOTENT = "Fedmcp-Idempotent"
"""On a request safe to run twice (read-only or idempotent by its annotations): the adapter may answer
with the result alone, without an `accept` first, when the result is quick (an edge that hears nothing
before the accept-by time sends the request again, which only such a request may risk)."""


class Kind:
    ACCEPT = "accept"
    BUSY = "busy"
    """The adapter is at its concurrency limit and did not take the request."""
    NOTIFY = "notify"
    REQUEST = "request"
    """A server-to-client request (sampling, elicitation, roots); answered on the frame's reply subject."""
    PULL = "pull"
    """Adapter -> edge: send piece `Fedmcp-Chunk-Index` of the request body."""
    CHUNK = "chunk"
    """A piece of the next frame's payload, too large for one NATS message."""
    RESULT = "result"
    GONE = "gone"
    """On a pinned subject (or after an accept): this instance does not hold the request's front
    session (any more); its backing session is gone, so the front session expires."""


def deadline_in(seconds: float) -> str:
    return str(int((time.time() + seconds) * 1000))


MAX_WAIT = 7 * 86400.0
"""Longest wait a header can ask for, in seconds: a larger one (or garbage) must not overflow timers."""


def remaining(headers: Mapping[str, str] | None, default: float, *, name: str = DEADLINE) -> float:
    """Seconds left before the time in header `name` (the deadline by default); negative when past.
    `default` when the header is absent or not a number of milliseconds; at most MAX_WAIT."""
    raw = headers.get(name) if headers else None
    if raw is None:
        return default
    try:
        return min(int(raw) / 1000 - time.time(), MAX_WAIT)
    except (ValueError, OverflowError):  # not an integer, more than 4300 digits, beyond a float
        return default


def base(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {BUS: BUS_PROTOCOL_VERSION}
    if extra:
        out.update(extra)
    return out


def speaks_our_protocol(headers: Mapping[str, str] | None) -> bool:
    return bool(headers) and headers is not None and headers.get(BUS) == BUS_PROTOCOL_VERSION
