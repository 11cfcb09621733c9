"""`fedmcp-edge`: serve the federation to MCP clients over Streamable HTTP or stdio."""

from __future__ import annotations

from functools import partial

import anyio
import click
from fedmcp.edge.http import serve_http
from fedmcp.edge.runtime import edge_runtime
from fedmcp.shared import buckets, chunks, logs, runner, telemetry
from fedmcp.shared.ops_http import bind
from fedmcp.shared.options import region_options
from fedmcp.shared.signals import stop_on_signals
from fedmcp.shared.subjects import DEFAULT_PREFIX
from mcp.server.stdio import stdio_server


async def run_http(
    nats_url: str,
    prefix: str,
    region: buckets.Region,
    host: str,
    port: int,
    path: str,
    max_body_bytes: int,
    request_timeout: float,
) -> None:
    stop = anyio.Event()
    async with (
        edge_runtime(nats_url, prefix=prefix, region=region, request_timeout=request_timeout) as edge,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(stop_on_signals, stop)
        await serve_http(edge, bind(host, port), path=path, max_body_bytes=max_body_bytes, stop=stop)
        tg.cancel_scope.cancel()


async def run_stdio(nats_url: str, prefix: str, region: buckets.Region) -> None:
    async with edge_runtime(nats_url, prefix=prefix, region=region) as edge, stdio_server() as (read, write):
        await edge.federated.server.run(read, write, edge.federated.initialization_options())


@click.command()
@click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True)
@region_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--path", default="/mcp", show_default=True)
@click.option("--max-body-bytes", default=chunks.DEFAULT_LIMIT, show_default=True)
@click.option("--request-timeout", default=60.0, show_default=True, help="Seconds a call may take end to end.")
@click.option("--stdio", is_flag=True, help="Speak MCP on stdin/stdout (for desktop clients) instead of HTTP.")
def main(
    nats_url: str,
    prefix: str,
    region: buckets.Region,
    host: str,
    port: int,
    path: str,
    max_body_bytes: int,
    request_timeout: float,
    stdio: bool,
) -> None:
    """Run an edge."""
    logs.configure("edge", region=region.name)
    telemetry.configure("edge", region=region.name)
    if stdio:
        runner.run(partial(run_stdio, nats_url, prefix, region))
    else:
        runner.run(partial(run_http, nats_url, prefix, region, host, port, path, max_body_bytes, request_timeout))


if __name__ == "__main__":
    main()
