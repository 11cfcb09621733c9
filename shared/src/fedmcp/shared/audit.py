"""The audit log: every security decision as an event in the region's JetStream stream.

One stream per region, `<prefix>_AUDIT_<region>` on `<prefix>.audit.<region>.>`; an event of
kind `consent.granted` goes to `<prefix>.audit.<region>.consent.granted`. Each carries its id
in `Nats-Msg-Id`, so a retried record is stored once (within the stream's duplicate window).

`Audit.record` never slows or fails the request it reports on: it publishes without waiting
for JetStream's ack (a bounded number of acks may be outstanding), and every event that is not
stored is counted in `fedmcp_audit_failures_total{reason}` instead of raising.

`allowed` events, one per tool call, are stored in batches: a message holds the events recorded
within BATCH_LINGER of its first (at most BATCH_MAX), one JSON object per line, so a busy edge
costs the stream a write per batch rather than per call. Any other event first sends the batch
waiting, so the stream keeps the order of the decisions. A message's `Nats-Msg-Id` is its first
event's id; read messages with `decode_all`.

    audit = Audit(nc, Subjects(prefix), region, edge=instance_id)
    await audit.start()                      # create or bind the stream (once, at startup)
    await audit.record(AuditEvent(kind="denied", principal=..., server=..., tool=..., reason=...))
    await audit.flush()                      # on drain: wait for the outstanding acks
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any, Literal, get_args

import anyio
import msgspec
import structlog
from fedmcp.shared import buckets, metrics, telemetry
from fedmcp.shared.buckets import LOCAL, Region
from fedmcp.shared.subjects import Subjects
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, Placement, RetentionPolicy, StorageType, StreamConfig
from opentelemetry import trace

log = structlog.get_logger("fedmcp.audit")

Kind = Literal[
    "allowed",
    "denied",
    "consent.asked",
    "consent.granted",
    "consent.declined",
    "consent.revoked",
    "policy.changed",
]
KINDS: tuple[str, ...] = get_args(Kind)
"""Every kind of event; a kind's dots become subject levels."""

MSG_ID = "Nats-Msg-Id"
DUPLICATE_WINDOW = 120.0
"""Seconds within which JetStream stores an event id once."""
MAX_AGE = 90 * 86400.0
"""Default retention of a region's audit stream, in seconds."""
BATCHED: frozenset[str] = frozenset({"allowed"})
"""Kinds stored in batches (the ones recorded per call)."""
BATCH_LINGER = 0.02
"""Seconds a batch waits for more events after its first."""
BATCH_MAX = 256


class AuditEvent(msgspec.Struct, kw_only=True):
    """One security decision. `record` fills `time`, `id`, `trace_id`, `region` and `edge` when left empty."""

    kind: Kind
    principal: str = ""
    """Who asked (user, client or token subject)."""
    tenant: str = ""
    server: str = ""
    """Backing server the decision is about."""
    tool: str = ""
    """Tool (or prompt, resource) the decision is about, as the backing server names it."""
    outcome: str = ""
    """Short machine-readable result, e.g. the rule that decided or a JSON-RPC error code."""
    reason: str = ""
    """Human-readable explanation."""
    trace_id: str = ""
    """32 hex digits; from the current OpenTelemetry span when empty."""
    region: str = ""
    edge: str = ""
    """Instance that decided."""
    time: float = 0.0
    """Unix epoch seconds."""
    id: str = ""
    """Event id, sent as `Nats-Msg-Id`: JetStream stores an id once. Set it to make a retried record idempotent."""
    arguments: dict[str, Any] | None = None
    """The call's arguments; dropped unless the Audit was made with `include_arguments=True`."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEvent)


def encode(event: AuditEvent) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AuditEvent:
    """One event (msgspec.DecodeError / ValidationError when it is not one)."""
    return _decoder.decode(data)


def decode_all(data: bytes) -> list[AuditEvent]:
    """The events of one stream message: one, or a batch (a line each)."""
    return [_decoder.decode(line) for line in data.split(b"\n") if line.strip()]


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits; "" outside a valid span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def stream_config(subjects: Subjects, region: Region, *, max_age: float = MAX_AGE) -> StreamConfig:
    return StreamConfig(
        name=subjects.audit_stream(region.name),
        subjects=[subjects.audit_all(region.name)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=region.replicas,
        placement=Placement(cluster=region.cluster) if region.cluster else None,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


class Audit:
    """Records a region's security decisions. Make one per service and connection; `start` it once."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        region: Region | str = LOCAL,
        include_arguments: bool = False,
        *,
        edge: str = "",
        max_pending: int = 1024,
        ack_timeout: float = 5.0,
        max_age: float = MAX_AGE,
        create: bool = True,
        patience: float = 30.0,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.region = region if isinstance(region, Region) else Region(region)
        self.include_arguments = include_arguments
        self.edge = edge
        self.max_pending = max_pending
        self.ack_timeout = ack_timeout
        self.max_age = max_age
        self.create = create
        self.patience = patience
        self.stream = subjects.audit_stream(self.region.name)
        self.js = nc.jetstream(timeout=5, publish_async_max_pending=max_pending)
        self._warned: dict[str, float] = {}
        self._id_base = uuid.uuid4().hex[:20]
        """Event ids: 80 random bits per Audit and a serial (cheaper than a uuid4 per event)."""
        self._serial = itertools.count(1)
        self._batch: list[bytes] = []
        self._batch_headers: dict[str, str] = {}
        self._batch_subject = ""
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind to the region's stream, creating it when missing and `create` (idempotent; replicas race
        safely). Waits up to `patience` seconds for a JetStream that is still electing its leader."""
        config = stream_config(self.subjects, self.region, max_age=self.max_age)
        wanted = self.subjects.audit_all(self.region.name)

        info = await buckets.open_stream(self.js, config, create=self.create, patience=self.patience)
        # An operator may have tuned an existing stream (retention, replicas): keep it, but it must
        # hold our subjects, or every event would be lost.
        if wanted not in (info.config.subjects or []):
            raise ValueError(f"stream {self.stream} exists but does not take {wanted}")

    async def record(self, event: AuditEvent) -> None:
        """Publish `event` without waiting for its ack. Never raises (cancellation aside): an event
        that cannot be stored is counted in `fedmcp_audit_failures_total` and logged."""
        try:
            if event.kind not in KINDS:
                self._failed("invalid", f"unknown audit kind {event.kind!r}")
                return
            if self.js.publish_async_pending() >= self.max_pending:
                self._failed("backlog", f"{self.max_pending} audit events await their ack")
                return
            event = msgspec.structs.replace(
                event,
                time=event.time or time.time(),
                id=event.id or f"{self._id_base}{next(self._serial)}",
                trace_id=event.trace_id or current_trace_id(),
                region=self.region.name,
                edge=event.edge or self.edge,
                arguments=event.arguments if self.include_arguments else None,
            )
            payload = encode(event)
        except Exception as exc:  # an unencodable argument, say
            self._failed("invalid", repr(exc))
            return
        batched = event.kind in BATCHED
        if batched and self._batch:  # headers and subject are the first event's
            self._batch.append(payload)
            if len(self._batch) >= BATCH_MAX:
                await self._send_batch()
            return
        hdrs = {MSG_ID: event.id}
        telemetry.inject(hdrs)
        subject = self.subjects.audit(self.region.name, event.kind)
        if batched:
            self._batch, self._batch_headers, self._batch_subject = [payload], hdrs, subject
            self._timer = asyncio.get_running_loop().call_later(BATCH_LINGER, self._linger_over)
            return
        await self._send_batch()  # first the decisions taken before this one
        await self._publish(subject, payload, hdrs, 1)

    def _linger_over(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._send_batch())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        await self._publish(self._batch_subject, b"\n".join(batch), self._batch_headers, len(batch))

    async def _publish(self, subject: str, payload: bytes, hdrs: dict[str, str], events: int) -> None:
        try:
            # Not cancelled half-way: publish_async counts the event as pending before it sends it.
            with anyio.CancelScope(shield=True):
                future = await self.js.publish_async(subject, payload, headers=hdrs)
        except Exception as exc:  # closed connection, outbound buffer full while reconnecting, ...
            self._failed("publish", repr(exc), events)
            return
        timer = asyncio.get_running_loop().call_later(self.ack_timeout, future.cancel)
        future.add_done_callback(lambda f: self._acked(f, timer, events))

    async def flush(self, timeout: float = 5.0) -> bool:
        """Send the batch waiting, then wait until every recorded event is acked or has failed;
        False if `timeout` passed first."""
        await self._send_batch()
        try:
            await asyncio.wait_for(self.js.publish_async_completed(), timeout)
        except TimeoutError:
            return False
        return True

    def _acked(self, future: asyncio.Future[Any], timer: asyncio.TimerHandle, events: int) -> None:
        timer.cancel()
        if future.cancelled():
            self._failed("timeout", f"no ack from JetStream within {self.ack_timeout}s", events)
        elif future.exception() is not None:
            self._failed("rejected", repr(future.exception()), events)

    def _failed(self, reason: str, detail: str, events: int = 1) -> None:
        metrics.AUDIT_FAILURES.labels(reason).inc(events)
        now = time.monotonic()
        if now - self._warned.get(reason, -60.0) >= 10.0:  # at most one line per reason every 10 s
            self._warned[reason] = now
            log.warning("audit event not stored", reason=reason, detail=detail, stream=self.stream)
