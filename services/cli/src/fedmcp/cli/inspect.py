"""`fedmcp ls`: the federation as the bus sees it (registry, catalogs, conflicts; with `--sessions`,
the region's handshake-era front sessions and their pins to instances)."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import click
from fedmcp.shared import buckets, bus, envelopes, frontsession, routing
from fedmcp.shared.envelopes import CatalogEntry, Instance, Pin
from fedmcp.shared.frontsession import SessionRecord
from fedmcp.shared.subjects import Subjects
from nats.js.kv import KeyValue


async def read_state(
    nats_url: str, prefix: str, region: buckets.Region = buckets.LOCAL
) -> tuple[dict[str, CatalogEntry], list[Instance]]:
    """The region's view, read by direct gets: it answers during a partition too."""
    subjects = Subjects(prefix)
    nc = await bus.connect(nats_url, name="fedmcp-ls", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        cat_kv = await buckets.open_bucket(js, subjects, buckets.CATALOGS, region, create=False, patience=5)
        reg_kv = await buckets.open_bucket(js, subjects, buckets.REGISTRY, region, create=False, patience=5)
        catalogs = {k: envelopes.decode(v, CatalogEntry) for k, v in (await buckets.read_all(js, cat_kv)).items()}
        instances = [envelopes.decode(v, Instance) for v in (await buckets.read_all(js, reg_kv)).values()]
        return catalogs, instances
    finally:
        await nc.close()


async def read_sessions(
    nats_url: str, prefix: str, region: buckets.Region = buckets.LOCAL
) -> tuple[list[SessionRecord], list[Pin]]:
    """The region's front sessions and pins (a bucket not made yet: none), by direct gets."""
    subjects = Subjects(prefix)
    nc = await bus.connect(nats_url, name="fedmcp-ls", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)

        async def entries(open_kv: Awaitable[KeyValue]) -> list[bytes]:
            try:
                kv = await open_kv
            except buckets.NotCreatedYet:
                return []
            return list((await buckets.read_all(js, kv)).values())

        sessions = await entries(frontsession.open_sessions(js, subjects, region, create=False, patience=0))
        pins = await entries(buckets.open_bucket(js, subjects, buckets.PINS, region, create=False, patience=0))
        return [frontsession.decode(v) for v in sessions], [envelopes.decode(v, Pin) for v in pins]
    finally:
        await nc.close()


def render_sessions(records: list[SessionRecord], pins: list[Pin]) -> str:
    now = time.time()
    lines = [f"{'SESSION':<34} {'PRINCIPAL':<20} {'VERSION':<11} {'CLIENT':<24} {'LOG':<8} {'SUBS':>4} {'WRITTEN':>8}"]
    for record in sorted(records, key=lambda r: r.id):
        info = record.client.get("clientInfo") if isinstance(record.client, dict) else None
        client = f"{info.get('name', '')} {info.get('version', '')}".strip() if isinstance(info, dict) else "-"
        written = f"{int(now - record.written)}s ago" if record.written else "-"
        lines.append(
            f"{record.id:<34} {record.principal[:20]:<20} {record.protocol_version:<11} {client[:24]:<24} "
            f"{record.log_level or '-':<8} {len(record.subscriptions):>4} {written:>8}"
        )
    lines.append("")
    lines.append(f"{'PINNED SESSION':<34} {'SERVER':<16} {'STATE':<8} {'INSTANCE':<44} EDGE")
    for pin in sorted(pins, key=lambda p: (p.session, p.server)):
        lines.append(f"{pin.session:<34} {pin.server:<16} {pin.state:<8} {pin.instance or '-':<44} {pin.edge or '-'}")
    return "\n".join(lines)


def render(catalogs: dict[str, CatalogEntry], instances: list[Instance]) -> str:
    table = routing.build(catalogs)
    lines = [f"{'SERVER':<20} {'ERA':<11} {'TOOLS':>5} {'PROMPTS':>7} {'RESOURCES':>9} {'TEMPLATES':>9}  INSTANCES"]
    by_server: dict[str, list[Instance]] = {}
    for inst in instances:
        by_server.setdefault(inst.server, []).append(inst)
    for name in sorted(set(catalogs) | set(by_server)):
        entry = catalogs.get(name)
        cat = entry.catalog if entry else None
        lines.append(
            f"{name:<20} {cat.protocol_version if cat else '-':<11} {len(cat.tools) if cat else 0:>5} "
            f"{len(cat.prompts) if cat else 0:>7} {len(cat.resources) if cat else 0:>9} "
            f"{len(cat.resource_templates) if cat else 0:>9}  {len(by_server.get(name, []))}"
        )
    lines.append("")
    lines.append(f"{'INSTANCE':<44} {'SERVER':<16} {'REGION':<10} {'STATE':<11} {'INFLIGHT':>8} {'AGE':>8}  VERSION")
    now = time.time()
    for inst in sorted(instances, key=lambda i: (i.server, i.instance)):
        age = f"{int(now - inst.started_at)}s" if inst.started_at else "-"
        lines.append(
            f"{inst.instance:<44} {inst.server:<16} {inst.region:<10} {inst.state:<11} {inst.inflight:>8} {age:>8}  {inst.version}"
        )
    if table.conflicts:
        lines.append("")
        lines.append("CONFLICTS")
        lines.extend(f"  {c}" for c in table.conflicts)
    return "\n".join(lines)


def print_state(catalogs: dict[str, CatalogEntry], instances: list[Instance]) -> None:
    click.echo(render(catalogs, instances))
