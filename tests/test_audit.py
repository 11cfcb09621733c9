"""The audit log on a real nats-server: every kind of event stored exactly once in the region's stream,
with the current span's trace id and without arguments unless asked; recording never raises or waits;
`fedmcp audit tail` prints what the stream holds and follows it until Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from fedmcp.shared import bus
from fedmcp.shared.audit import BATCH_MAX, KINDS, Audit, AuditEvent, decode, decode_all
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.subjects import Subjects
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy
from opentelemetry.sdk.trace import TracerProvider
from procs import fedmcp
from prometheus_client import REGISTRY

pytestmark = pytest.mark.anyio

SUBJECTS = Subjects()
STREAM = "fedmcp_AUDIT_local"


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("fedmcp_audit_failures_total", {"reason": reason}) or 0.0


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[NATS]:
    nc = await bus.connect(url, name="test-audit")
    try:
        yield nc
    finally:
        await nc.close()


async def stored(nc: NATS, stream: str = STREAM) -> list[Any]:
    """Every message of the stream, in order, read by sequence (no consumer)."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


def decision(kind: str, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "principal": "alice",
        "tenant": "acme",
        "server": "demo",
        "tool": "echo",
        "outcome": "ok" if kind == "allowed" else kind,
        "reason": f"because {kind}",
        "arguments": {"text": "a secret"},
        **kw,
    }
    return AuditEvent(kind=kind, **fields)  # type: ignore[arg-type]


async def test_every_kind_stored_once_with_the_span_trace_id_and_no_arguments(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        audit = Audit(nc, SUBJECTS, "local", edge="edge-1")
        await audit.start()
        await audit.start()  # idempotent
        await Audit(nc, SUBJECTS, "local").start()  # a second service binds the same stream
        before = {reason: failures(reason) for reason in ("backlog", "publish", "rejected", "timeout", "invalid")}
        tracer = TracerProvider().get_tracer("test")
        started = time.time()
        with tracer.start_as_current_span("policy decision") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            for kind in KINDS:
                await audit.record(decision(kind))
            # A record sent again with the same id (a retry) is stored once.
            await audit.record(decision("denied", id="retried-decision", reason="sent twice"))
            await audit.record(decision("denied", id="retried-decision", reason="sent twice"))
        assert await audit.flush()
        finished = time.time()

        messages = await stored(nc)
        assert len(messages) == len(KINDS) + 1
        info = await nc.jetstream().stream_info(STREAM)
        assert info.state.messages == len(KINDS) + 1
        assert info.config.subjects == ["fedmcp.audit.local.>"]
        assert info.config.deny_delete and info.config.deny_purge

        events = [decode(m.data) for m in messages]
        assert [e.kind for e in events] == [*KINDS, "denied"]
        for msg, event in zip(messages, events, strict=True):
            assert msg.subject == f"fedmcp.audit.local.{event.kind}"
            assert msg.headers["Nats-Msg-Id"] == event.id
            assert trace_id in msg.headers["traceparent"]
            assert (event.principal, event.tenant, event.server, event.tool) == ("alice", "acme", "demo", "echo")
            assert event.reason in (f"because {event.kind}", "sent twice")
            assert event.trace_id == trace_id
            assert (event.region, event.edge) == ("local", "edge-1")
            assert started <= event.time <= finished
            assert event.arguments is None  # dropped: not configured to keep them
        assert events[-1].id == "retried-decision"
        assert len({e.id for e in events}) == len(events)
        assert {r: failures(r) for r in before} == before


async def test_arguments_kept_when_configured_and_no_trace_outside_a_span(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        audit = Audit(nc, SUBJECTS, "local", include_arguments=True)
        await audit.start()
        await audit.record(decision("allowed", arguments={"text": "kept", "n": [1, 2]}))
        await audit.record(decision("consent.granted", trace_id="0af7651916cd43dd8448eb211c80319c"))
        assert await audit.flush()
        first, second = (decode(m.data) for m in await stored(nc))
        assert first.arguments == {"text": "kept", "n": [1, 2]}
        assert first.trace_id == ""
        assert second.arguments == {"text": "a secret"}
        assert second.trace_id == "0af7651916cd43dd8448eb211c80319c"


async def test_allowed_calls_are_stored_in_batches_in_the_order_decided(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        audit = Audit(nc, SUBJECTS, "local", edge="edge-1")
        await audit.start()
        for i in range(5):
            await audit.record(decision("allowed", reason=f"call {i}"))
        await audit.record(decision("denied"))  # sends the batch before it
        for i in range(5, 5 + BATCH_MAX + 1):  # a full batch goes at once, the rest waits
            await audit.record(decision("allowed", reason=f"call {i}"))
        assert await audit.flush()
        messages = await stored(nc)
        assert [len(decode_all(m.data)) for m in messages] == [5, 1, BATCH_MAX, 1]
        events = [e for m in messages for e in decode_all(m.data)]
        calls = [f"call {i}" for i in range(5 + BATCH_MAX + 1)]
        assert [e.reason for e in events] == [*calls[:5], "because denied", *calls[5:]]
        assert [m.headers["Nats-Msg-Id"] for m in messages] == [decode_all(m.data)[0].id for m in messages]
        assert [m.subject.rsplit(".", 1)[1] for m in messages] == ["allowed", "denied", "allowed", "allowed"]
        assert len({e.id for e in events}) == len(events)

        # Without a flush, a batch goes once it has waited its linger time.
        js = nc.jetstream()
        sub = await js.subscribe(
            SUBJECTS.audit("local", "allowed"), ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        await audit.record(decision("allowed", reason="alone"))
        msg = await sub.next_msg(timeout=5)
        assert [e.reason for e in decode_all(msg.data)] == ["alone"]


async def test_record_never_raises_nor_waits_and_counts_what_is_lost(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        # No stream for this region: JetStream has no responder, the event is rejected.
        rejected = failures("rejected")
        lost = Audit(nc, SUBJECTS, "nowhere")
        await lost.record(decision("denied"))
        assert await lost.flush()
        assert failures("rejected") == rejected + 1

        # Not an audit kind.
        invalid = failures("invalid")
        await lost.record(AuditEvent(kind="bogus"))  # type: ignore[arg-type]
        assert failures("invalid") == invalid + 1

        # Something that swallows events without acking: record returns at once, a bounded number of
        # acks may be outstanding, the rest is counted, and the unacked ones time out.
        swallowed: list[bytes] = []

        async def black_hole(msg: Any) -> None:
            swallowed.append(msg.data)

        await nc.subscribe(SUBJECTS.audit_all("blackhole"), cb=black_hole)
        await nc.flush()
        backlog, timeout = failures("backlog"), failures("timeout")
        slow = Audit(nc, SUBJECTS, "blackhole", max_pending=2, ack_timeout=0.5)
        with anyio.fail_after(0.4):  # well before any ack could time out
            for kind in ("allowed", "denied", "consent.asked"):
                await slow.record(decision(kind))
        assert slow.js.publish_async_pending() == 2
        assert failures("backlog") == backlog + 1
        assert await slow.flush()
        assert failures("timeout") == timeout + 2
        assert len(swallowed) == 2

    # A closed connection.
    publish = failures("publish")
    await lost.record(decision("denied"))
    assert failures("publish") == publish + 1


async def run_tail(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process(fedmcp("audit", "tail", "--nats-url", url, *args), check=False)


async def test_tail_prints_the_stream(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        audit = Audit(nc, SUBJECTS, "local", edge="edge-1")
        await audit.start()
        for kind in KINDS:
            await audit.record(decision(kind))
        assert await audit.flush()
        expected = [decode(m.data) for m in await stored(nc)]

    result = await run_tail(nats_server.url, "--count", str(len(KINDS)), "--json", "--all")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [decode(line.encode()) for line in lines] == expected
    assert json.loads(lines[0])["kind"] == "allowed"

    result = await run_tail(nats_server.url, "--count", "4", "--kind", "consent", "--since", "1h")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split()[1] for line in lines] == [k for k in KINDS if k.startswith("consent.")]
    assert all("principal=alice" in line and "edge=edge-1" in line for line in lines)
    assert 'reason="because consent.asked"' in lines[0]

    result = await run_tail(nats_server.url, "--count", "1", "--region", "elsewhere")
    assert result.returncode == 1
    assert b"cannot read audit stream fedmcp_AUDIT_elsewhere" in result.stderr
    assert b"Traceback" not in result.stderr


async def read_line(process: Process, buffer: bytearray) -> str:
    assert process.stdout is not None
    with anyio.fail_after(30):
        while b"\n" not in buffer:
            buffer += await process.stdout.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_tail_follows_until_ctrl_c(nats_server: NatsServer) -> None:
    async with connected(nats_server.url) as nc:
        audit = Audit(nc, SUBJECTS, "local")
        await audit.start()
        await audit.record(decision("denied", reason="before"))
        assert await audit.flush()
        args = fedmcp("audit", "tail", "--nats-url", nats_server.url, "--all", "--json")
        async with await anyio.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            buffer = bytearray()
            assert json.loads(await read_line(process, buffer))["reason"] == "before"
            await audit.record(decision("policy.changed", reason="while following"))
            assert json.loads(await read_line(process, buffer))["reason"] == "while following"
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await process.wait() == 0
            assert process.stderr is not None
            err = b""
            async for chunk in process.stderr:
                err += chunk
            assert b"Traceback" not in err, err.decode()
