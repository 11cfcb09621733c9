"""`fedmcp audit tail`: follow a region's audit stream, one line (or JSON object) per security decision."""

from __future__ import annotations

import datetime
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import click
import msgspec
from fedmcp.shared import audit as audit_log
from fedmcp.shared import bus, logs
from fedmcp.shared.audit import KINDS, AuditEvent
from fedmcp.shared.subjects import DEFAULT_PREFIX, Subjects
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
FAMILIES = {"consent": [k for k in KINDS if k.startswith("consent.")]}
"""`--kind consent` selects every consent event."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d`, `250ms` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 2h or 7d", param_hint="--since")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")


def render(event: AuditEvent) -> str:
    """One human-readable line: time, kind, then the fields that are set."""
    when = _rfc3339(event.time).replace("+00:00", "Z")
    fields: list[str] = []
    for name in ("principal", "tenant", "server", "tool", "outcome", "reason", "region", "edge", "trace_id"):
        value = getattr(event, name)
        if value:
            fields.append(f"{name}={json.dumps(value) if (' ' in value or not value.isprintable()) else value}")
    if event.arguments is not None:
        fields.append(f"arguments={json.dumps(event.arguments, separators=(',', ':'), ensure_ascii=False)}")
    return f"{when} {event.kind:<16} {' '.join(fields)}"


async def _start_sequence(nc: NATS, js: JetStreamContext, stream: str, since: float | None, everything: bool) -> int:
    """The first stream sequence to show: 1 (--all), the first stored at or after `since`, or the next one."""
    if everything:
        return 1
    last: int = (await js.stream_info(stream)).state.last_seq
    if since is None:
        return last + 1
    start = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat().replace("+00:00", "Z")
    # The documented JetStream message-get API by time (nats-py has no wrapper for it).
    request = json.dumps({"start_time": start}).encode()
    reply = await nc.request(f"{js._prefix}.STREAM.MSG.GET.{stream}", request, timeout=5)
    found: dict[str, Any] = json.loads(reply.data)
    if "message" in found:
        return int(found["message"]["seq"])
    return last + 1  # nothing stored since then: from the next event on


async def tail(
    nats_url: str,
    prefix: str,
    region: str,
    *,
    since: float | None,
    everything: bool,
    kinds: list[str],
    as_json: bool,
    count: int | None,
) -> None:
    subjects = Subjects(prefix)
    stream = subjects.audit_stream(region)
    try:
        nc = await bus.connect(nats_url, name="fedmcp-audit")
    except Exception as exc:
        raise click.ClickException(f"cannot connect to NATS at {nats_url}: {exc!r}") from None
    try:
        js = nc.jetstream(timeout=5)
        try:
            first = await _start_sequence(nc, js, stream, since, everything)
        except Exception as exc:
            raise click.ClickException(
                f"cannot read audit stream {stream} of region {region!r}: {exc!r} "
                "(no stream yet means nothing has recorded an event in this region)"
            ) from None
        filters = [subjects.audit(region, k) for k in kinds] or [subjects.audit_all(region)]
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first, filter_subjects=filters
        )
        sub = await js.subscribe(filters[0], stream=stream, ordered_consumer=True, config=config)
        shown = 0
        last_seq = first - 1
        async for msg in sub.messages:
            seq = msg.metadata.sequence.stream
            if seq <= last_seq:  # an ordered consumer that was reset may deliver again
                continue
            last_seq = seq
            try:
                events = audit_log.decode_all(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                click.echo(f"skipped unreadable event at stream sequence {seq}: {exc}", err=True)
                continue
            for event in events:  # one, or a batch of allowed calls
                click.echo(audit_log.encode(event).decode() if as_json else render(event))
                shown += 1
                if count is not None and shown >= count:
                    return
    finally:
        with anyio.move_on_after(2, shield=True):
            await nc.close()


async def _until_signalled(main: Callable[[], Awaitable[None]]) -> click.ClickException | None:
    """Run `main`; SIGINT or SIGTERM stops it quietly. Returns its ClickException, raised outside the task group."""
    failure: click.ClickException | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            await main()
        except click.ClickException as exc:
            failure = exc
        tg.cancel_scope.cancel()
    return failure


@click.group("audit")
def audit() -> None:
    """The audit log: every security decision (allowed, denied, consent, policy changes)."""


@audit.command("tail")
@click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True)
@click.option("--region", envvar="FEDMCP_REGION", default="local", show_default=True, help="Whose audit stream.")
@click.option("--since", default=None, help="Start with the events stored this long ago: 30s, 15m, 2h, 7d.")
@click.option("--all", "everything", is_flag=True, help="Start with the oldest event kept.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice([*KINDS, *FAMILIES]),
    help="Only events of this kind (repeatable; 'consent' is every consent.* kind).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as stored.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
def tail_command(
    nats_url: str,
    prefix: str,
    region: str,
    since: str | None,
    everything: bool,
    kinds: tuple[str, ...],
    as_json: bool,
    count: int | None,
) -> None:
    """Follow the region's audit stream (from now on, unless --since or --all). Ctrl-C stops."""
    if since is not None and everything:
        raise click.UsageError("--since and --all exclude each other")
    start = None if since is None else datetime.datetime.now(datetime.UTC).timestamp() - parse_duration(since)
    wanted = sorted({k for kind in kinds for k in FAMILIES.get(kind, [kind])}, key=KINDS.index)
    try:
        Subjects(prefix).audit_stream(region)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    logs.configure("cli", region=region, level="error")  # stdout is for the events
    try:
        failure = anyio.run(
            _until_signalled,
            lambda: tail(
                nats_url, prefix, region, since=start, everything=everything, kinds=wanted, as_json=as_json, count=count
            ),
        )
    except KeyboardInterrupt:  # before the signal handler was installed
        return
    except BrokenPipeError:  # `fedmcp audit tail | head`
        sys.stderr.close()
        return
    if failure is not None:
        raise failure
