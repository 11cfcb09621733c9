"""`fedmcp up`: the whole federation in one process, for a laptop or a demo.

An embedded nats-server (unless --nats-url is given), the manager, one
adapter per configured server replica and an HTTP edge. They still talk only
over NATS, exactly as when deployed apart.
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import click
import structlog
from fedmcp.adapter.service import Adapter
from fedmcp.edge.auth import Authenticator
from fedmcp.edge.http import endpoint, serve_http
from fedmcp.edge.runtime import edge_runtime
from fedmcp.manager.main import run_manager
from fedmcp.shared import bus, tls
from fedmcp.shared.buckets import Region
from fedmcp.shared.config import Config
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.ops_http import bind
from fedmcp.shared.signals import stop_on_signals
from fedmcp.shared.subjects import Subjects

log = structlog.get_logger("fedmcp.up")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


async def run_up(config: Config, *, nats_url: str | None, ready_timeout: float = 20.0) -> None:
    stop = anyio.Event()
    subjects = Subjects(config.prefix)
    region = Region(config.region)
    # [edge] tls_cert / tls_key / tls_client_ca: HTTPS (checked before anything starts)
    ssl = tls.optional_server_context(config.edge.tls_cert, config.edge.tls_key, config.edge.tls_client_ca)
    async with AsyncExitStack() as stack:
        if nats_url is None:
            port = 4222 if _port_free("127.0.0.1", 4222) else free_port()
            embedded = NatsServer(Path(config.data_dir) / "nats", port=port)
            embedded.start()
            stack.callback(embedded.stop)
            nats_url = embedded.url
        manager_stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signals, stop)
            await tg.start(
                lambda task_status: run_manager(
                    nats_url, prefix=config.prefix, region=region, stop=manager_stop, task_status=task_status
                )
            )
            adapters: list[Adapter] = []
            for name, server in config.servers.items():
                for _ in range(max(1, server.replicas)):
                    nc = await bus.connect(nats_url, name=f"adapter-{name}")
                    stack.push_async_callback(nc.drain)
                    adapter = Adapter(nc, name, server, subjects=subjects, region=config.region)
                    adapters.append(adapter)
                    tg.start_soon(adapter.run)
            async with edge_runtime(
                nats_url,
                prefix=config.prefix,
                region=region,
                request_timeout=config.edge.request_timeout,
                sse_poll_after=config.edge.sse_poll_after,
            ) as edge:
                with anyio.move_on_after(ready_timeout) as waiting:

                    async def cancel_on_stop() -> None:
                        await stop.wait()  # Ctrl-C while servers are still starting
                        waiting.cancel()

                    tg.start_soon(cancel_on_stop)
                    for adapter in adapters:
                        await adapter.ready.wait()
                    await edge.view.wait_until(lambda table: set(config.servers) <= set(table.servers))
                missing = sorted(set(config.servers) - set(edge.view.table.servers))
                if missing:
                    log.warning("servers not ready yet; they join when they connect", servers=missing)
                sock = bind(config.edge.host, config.edge.port)
                url = endpoint(sock, config.edge.path, tls=ssl is not None)
                click.echo(f"fedmcp is up: MCP endpoint {url}  (NATS {nats_url})")
                click.echo(f"servers: {', '.join(sorted(edge.view.table.servers)) or 'none'}; Ctrl-C stops.")
                auth = config.edge.auth
                await serve_http(
                    edge,
                    sock,
                    stop=stop,
                    path=config.edge.path,
                    max_body_bytes=config.edge.max_body_bytes,
                    ssl=ssl,
                    authenticator=Authenticator(auth) if auth is not None else None,
                    anonymous=config.edge.anonymous,
                    allowed_hosts=config.edge.allowed_hosts,
                    allowed_origins=config.edge.allowed_origins,
                )
            for adapter in adapters:
                adapter.stop()
            manager_stop.set()
    click.echo("fedmcp stopped")
