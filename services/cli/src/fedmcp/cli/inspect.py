"""`fedmcp ls`: the federation as the bus sees it (registry, catalogs, conflicts)."""

from __future__ import annotations

import time

import click
from fedmcp.shared import buckets, bus, envelopes, routing
from fedmcp.shared.envelopes import CatalogEntry, Instance
from fedmcp.shared.subjects import Subjects


async def read_state(nats_url: str, prefix: str) -> tuple[dict[str, CatalogEntry], list[Instance]]:
    subjects = Subjects(prefix)
    nc = await bus.connect(nats_url, name="fedmcp-ls", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        catalogs: dict[str, CatalogEntry] = {}
        instances: list[Instance] = []
        cat_kv = await buckets.open_bucket(js, subjects, buckets.CATALOGS)
        reg_kv = await buckets.open_bucket(js, subjects, buckets.REGISTRY)
        for key in await _keys(cat_kv):
            entry = await cat_kv.get(key)
            if entry.value:
                catalogs[key] = envelopes.decode(entry.value, CatalogEntry)
        for key in await _keys(reg_kv):
            entry = await reg_kv.get(key)
            if entry.value:
                instances.append(envelopes.decode(entry.value, Instance))
        return catalogs, instances
    finally:
        await nc.close()


async def _keys(kv: object) -> list[str]:
    try:
        keys: list[str] = await kv.keys()  # type: ignore[attr-defined]
        return keys
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return []


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
