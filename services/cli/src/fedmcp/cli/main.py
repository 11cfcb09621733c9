"""`fedmcp`: one command for every role.

fedmcp up        the whole federation in one process (embedded NATS)
fedmcp edge      an edge (HTTP or --stdio)
fedmcp manager   a federation manager
fedmcp adapter   an adapter for one backing server
fedmcp ls        servers, instances and conflicts, read from the bus
fedmcp call      call a tool through an edge
fedmcp policy    the region's authorization policy (show, set, check, history)
fedmcp consent   consent grants (list, revoke)
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import click
from fedmcp.adapter.main import main as adapter_main
from fedmcp.cli import admin, inspect
from fedmcp.cli import call as call_mod
from fedmcp.cli.audit import audit as audit_group
from fedmcp.cli.certs import certs
from fedmcp.cli.keys import keys
from fedmcp.cli.up import run_up
from fedmcp.edge.main import main as edge_main
from fedmcp.manager.main import main as manager_main
from fedmcp.shared import logs, runner, telemetry
from fedmcp.shared.buckets import Region
from fedmcp.shared.config import Config, load_mcp_json, load_toml
from fedmcp.shared.options import region_options


@click.group(help=__doc__)
def cli() -> None:
    pass


cli.add_command(edge_main, "edge")
cli.add_command(manager_main, "manager")
cli.add_command(adapter_main, "adapter")
cli.add_command(admin.policy_group, "policy")
cli.add_command(admin.consent_group, "consent")
cli.add_command(audit_group, "audit")
cli.add_command(certs, "certs")
cli.add_command(keys, "keys")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default="fedmcp.toml", show_default=True)
@click.option("--mcp-json", type=click.Path(exists=True, dir_okay=False), help="A desktop client's mcpServers file.")
@click.option("--nats-url", default=None, help="Use this NATS instead of starting an embedded nats-server.")
@click.option("--port", type=int, default=None, help="Edge HTTP port (default from the config, 8765).")
def up(config_path: str, mcp_json: str | None, nats_url: str | None, port: int | None) -> None:
    """Run the federation: embedded NATS, manager, edge and one adapter per server."""
    path = Path(config_path)
    config = load_toml(path) if path.exists() else Config()
    if mcp_json:
        config = load_mcp_json(Path(mcp_json), config)
    if port is not None:
        config.edge.port = port
    if not config.servers:
        raise click.UsageError(f"no servers configured (looked in {config_path}; try --mcp-json)")
    logs.configure("up", region=config.region)
    telemetry.configure("up", region=config.region)
    runner.run(partial(run_up, config, nats_url=nats_url or config.nats_url))


@cli.command("ls")
@click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--prefix", default="fedmcp", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sessions", is_flag=True, help="Also the handshake-era front sessions and their pins to instances.")
@region_options
def ls(nats_url: str, prefix: str, as_json: bool, sessions: bool, region: Region) -> None:
    """Show servers, instances and catalog conflicts, as the region's control plane sees them."""
    logs.configure("cli", region=region.name, level="error")  # stdout is for the answer
    try:
        catalogs, instances = anyio.run(inspect.read_state, nats_url, prefix, region)
        records, pins = anyio.run(inspect.read_sessions, nats_url, prefix, region) if sessions else ([], [])
    except Exception as exc:  # unreachable NATS, no JetStream, no such region: say so, no traceback
        raise click.ClickException(
            f"cannot read the registry of region {region.name!r} at {nats_url}: {exc!r}"
        ) from None
    if as_json:
        from fedmcp.shared import envelopes, frontsession, routing

        doc = {
            "servers": {k: json.loads(envelopes.encode(v)) for k, v in catalogs.items()},
            "instances": [json.loads(envelopes.encode(i)) for i in instances],
            "conflicts": routing.build(catalogs).conflicts,
        }
        if sessions:
            doc["sessions"] = [json.loads(frontsession.encode(r)) for r in records]
            doc["pins"] = [json.loads(envelopes.encode(p)) for p in pins]
        click.echo(call_mod.dumps(doc))
    else:
        inspect.print_state(catalogs, instances)
        if sessions:
            click.echo("")
            click.echo(inspect.render_sessions(records, pins))


@cli.command()
@click.argument("tool", required=False)
@click.argument("arguments", required=False, default="{}")
@click.option("--url", default="http://127.0.0.1:8765/mcp", show_default=True)
@click.option("--mode", type=click.Choice(["auto", "legacy", "2026-07-28"]), default="auto", show_default=True)
def call(tool: str | None, arguments: str, url: str, mode: str) -> None:
    """Call TOOL with ARGUMENTS (JSON) through an edge; without TOOL, list the tools."""
    if tool is None:
        for name in anyio.run(call_mod.list_tools, url, mode):
            click.echo(name)
        return
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="ARGUMENTS") from None
    click.echo(call_mod.dumps(anyio.run(call_mod.call_tool, url, tool, args, mode)))


if __name__ == "__main__":
    cli()
