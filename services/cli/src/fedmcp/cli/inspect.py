"""`fedmcp ls`: the federation as the bus sees it (registry, catalogs, conflicts)."""

from __future__ import annotations

import time

import click
from fedmcp.shared import buckets, bus, envelopes, routing
from fedmcp.shared.envelopes import CatalogEntry, Instance
from fedmcp.shared.subjects import Subjects


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
