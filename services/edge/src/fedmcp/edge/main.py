"""`fedmcp-edge`: serve the federation to MCP clients over Streamable HTTP or stdio."""

from __future__ import annotations

import getpass
from functools import partial
from pathlib import Path

import anyio
import click
import msgspec
import structlog
from fedmcp.edge.auth import LOOPBACK, Authenticator
from fedmcp.edge.http import endpoint, serve_http
from fedmcp.edge.runtime import edge_runtime
from fedmcp.shared import buckets, chunks, logs, runner, telemetry, tls
from fedmcp.shared.config import EdgeAuth, EdgeSettings
from fedmcp.shared.ops_http import bind
from fedmcp.shared.options import region_options
from fedmcp.shared.policy import Principal
from fedmcp.shared.signals import stop_on_signals
from fedmcp.shared.subjects import DEFAULT_PREFIX
from mcp.server.stdio import stdio_server

log = structlog.get_logger("fedmcp.edge")


async def run_http(
    nats_url: str, prefix: str, region: buckets.Region, settings: EdgeSettings, identity_key: str | None = None
) -> None:
    stop = anyio.Event()
    async with (
        edge_runtime(
            nats_url,
            prefix=prefix,
            region=region,
            request_timeout=settings.request_timeout,
            sse_poll_after=settings.sse_poll_after,
            identity_key=identity_key,
        ) as edge,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(stop_on_signals, stop)
        sock = bind(settings.host, settings.port)
        ssl = tls.optional_server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        log.info("serving MCP", endpoint=endpoint(sock, settings.path, tls=ssl is not None))
        await serve_http(
            edge,
            sock,
            path=settings.path,
            max_body_bytes=settings.max_body_bytes,
            stop=stop,
            ssl=ssl,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=settings.allowed_origins,
            authenticator=Authenticator(settings.auth) if settings.auth is not None else None,
            anonymous=settings.anonymous,
        )
        tg.cancel_scope.cancel()


async def run_stdio(
    nats_url: str, prefix: str, region: buckets.Region, principal: Principal, identity_key: str | None
) -> None:
    async with (
        edge_runtime(
            nats_url, prefix=prefix, region=region, local_principal=principal, identity_key=identity_key
        ) as edge,
        stdio_server() as (read, write),
    ):
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
@click.option(
    "--sse-poll-after",
    type=float,
    default=None,
    help="SEP-1699 polling: close a handshake-era call's POST stream after this many seconds; "
    "the client resumes it with Last-Event-ID.",
)
@click.option(
    "--tls-cert",
    envvar="FEDMCP_EDGE_TLS_CERT",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (chain): serve HTTPS instead of HTTP.",
)
@click.option(
    "--tls-key",
    envvar="FEDMCP_EDGE_TLS_KEY",
    type=click.Path(exists=True, dir_okay=False),
    help="Private key of --tls-cert (PEM), unless it is in that file.",
)
@click.option(
    "--tls-client-ca",
    envvar="FEDMCP_EDGE_TLS_CLIENT_CA",
    type=click.Path(exists=True, dir_okay=False),
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A Host header the MCP endpoint takes (repeatable; `name:*` any port, `*` any). "
    "Default: loopback names when bound to loopback, else any.",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="A browser Origin the MCP endpoint takes (repeatable; `https://app.example:*`, `*`). "
    "Default: loopback origins when bound to loopback, else none.",
)
@click.option(
    "--auth",
    "auth_file",
    envvar="FEDMCP_EDGE_AUTH",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file with the resource-server settings (resource, issuer, jwks_file|jwks_url, "
    "required_scopes, api_keys_file); see docs/security.md.",
)
@click.option("--anonymous", is_flag=True, help="Serve callers without credentials (loopback addresses only).")
@click.option(
    "--principal",
    envvar="FEDMCP_LOCAL_PRINCIPAL",
    default=None,
    help="The identity of the local user of a --stdio edge (default: local:<login name>).",
)
@click.option(
    "--identity-key",
    envvar="FEDMCP_IDENTITY_KEY",
    type=click.Path(exists=True, dir_okay=False),
    help="Ed25519 private key (PEM) that signs callers' identities for adapters (fedmcp keys identity).",
)
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
    sse_poll_after: float | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    allowed_hosts: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    auth_file: str | None,
    anonymous: bool,
    principal: str | None,
    identity_key: str | None,
    stdio: bool,
) -> None:
    """Run an edge."""
    logs.configure("edge", region=region.name)
    telemetry.configure("edge", region=region.name)
    if stdio:
        local = Principal(id=principal or f"local:{getpass.getuser()}")
        runner.run(partial(run_stdio, nats_url, prefix, region, local, identity_key))
    else:
        try:
            auth = msgspec.toml.decode(Path(auth_file).read_bytes(), type=EdgeAuth) if auth_file else None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise click.UsageError(f"--auth {auth_file}: {exc}") from None
        if auth is None and not anonymous:
            raise click.UsageError("give --auth FILE, or --anonymous to serve callers without credentials")
        if auth is None and host not in LOOPBACK:
            raise click.UsageError("--anonymous is only allowed on a loopback address")
        settings = EdgeSettings(
            host=host,
            port=port,
            path=path,
            max_body_bytes=max_body_bytes,
            request_timeout=request_timeout,
            sse_poll_after=sse_poll_after,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            allowed_hosts=list(allowed_hosts),
            allowed_origins=list(allowed_origins),
            anonymous=anonymous,
            auth=auth,
        )
        try:  # a bad certificate or key is a usage error, before anything connects
            tls.optional_server_context(tls_cert, tls_key, tls_client_ca)
        except (ValueError, OSError) as exc:
            raise click.UsageError(f"TLS: {exc}") from None
        runner.run(partial(run_http, nats_url, prefix, region, settings, identity_key))


if __name__ == "__main__":
    main()
