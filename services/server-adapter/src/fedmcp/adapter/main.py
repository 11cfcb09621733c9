"""`fedmcp-adapter`: run one adapter process for one backing server."""

from __future__ import annotations

import sys
from functools import partial

import anyio
import click
import msgspec
from fedmcp.adapter.service import Adapter
from fedmcp.shared import bus, logs, runner, telemetry
from fedmcp.shared.config import BackingServer, decode_server, load_toml
from fedmcp.shared.ops_http import bind, serve_ops
from fedmcp.shared.signals import stop_on_signals
from fedmcp.shared.subjects import Subjects


async def serve(
    nats_url: str,
    name: str,
    server: BackingServer,
    *,
    prefix: str,
    region: str,
    heartbeat: float = 2.0,
    http: tuple[str, int] | None = None,
) -> None:
    adapter_nc = await bus.connect(nats_url, name=f"adapter-{name}")
    adapter = Adapter(adapter_nc, name, server, subjects=Subjects(prefix), region=region, heartbeat_interval=heartbeat)
    logs.configure("adapter", region=region, instance=adapter.instance.instance)
    telemetry.configure("adapter", region=region, instance=adapter.instance.instance)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, stop)

        async def relay() -> None:
            await stop.wait()
            adapter.stop()

        tg.start_soon(relay)
        if http is not None:

            def readiness() -> dict[str, bool]:
                return {"nats": bool(adapter_nc.is_connected), "backing_server": adapter.backend.state == "ready"}

            tg.start_soon(partial(serve_ops, bind(*http), readiness, stop=stop))
        await adapter.run()
        tg.cancel_scope.cancel()
    await adapter_nc.drain()


@click.command()
@click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="fedmcp.toml")
@click.option("--name", required=True, help="Server name (a key of [servers] in the config).")
@click.option("--server-json", help="The server's settings as JSON instead of --config.")
@click.option("--prefix", default=None, help="Subject prefix of the federation.")
@click.option("--region", envvar="FEDMCP_REGION", default=None)
@click.option("--heartbeat", default=2.0, show_default=True, help="Seconds between heartbeats.")
@click.option("--http-port", type=int, default=None, help="Serve /metrics, /healthz and /readyz on this port.")
@click.option("--http-host", default="127.0.0.1", show_default=True)
@click.option(
    "--affinity",
    type=click.Choice(["none", "session"]),
    default=None,
    help="session: a stateful server; each front session gets a backing session of its own, pinned to one "
    "adapter instance (default: the server's configured affinity, else none).",
)
@click.option("--max-sessions", type=int, default=None, help="With --affinity session: pinned sessions at most.")
@click.option(
    "--session-idle-timeout", type=float, default=None, help="With --affinity session: close idle ones after seconds."
)
def main(
    nats_url: str,
    config_path: str | None,
    name: str,
    server_json: str | None,
    prefix: str | None,
    region: str | None,
    heartbeat: float,
    http_port: int | None,
    http_host: str,
    affinity: str | None,
    max_sessions: int | None,
    session_idle_timeout: float | None,
) -> None:
    """Wrap one backing MCP server (stdio command or HTTP URL) and serve it on the bus."""
    from pathlib import Path

    if server_json:
        server = decode_server(server_json.encode())
        server.check(name)
        cfg_prefix, cfg_region = "fedmcp", "local"
    elif config_path:
        config = load_toml(Path(config_path))
        if name not in config.servers:
            raise click.BadParameter(f"no server {name!r} in {config_path}", param_hint="--name")
        server, cfg_prefix, cfg_region = config.servers[name], config.prefix, config.region
    else:
        raise click.UsageError("give --config or --server-json")
    overrides = {
        key: value
        for key, value in (
            ("affinity", affinity),
            ("max_sessions", max_sessions),
            ("session_idle_timeout", session_idle_timeout),
        )
        if value is not None
    }
    if overrides:
        server = msgspec.structs.replace(server, **overrides)
        try:
            server.check(name)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        runner.run(
            partial(
                serve,
                nats_url,
                name,
                server,
                prefix=prefix or cfg_prefix,
                region=region or cfg_region,
                heartbeat=heartbeat,
                http=(http_host, http_port) if http_port is not None else None,
            )
        )
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
