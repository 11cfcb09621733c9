"""`fedmcp-manager`: the control plane (registry, routes, health). Never on the request path."""

from __future__ import annotations

import os
from functools import partial

import anyio
import click
import structlog
from fedmcp.manager import lease
from fedmcp.manager.registry import Registry
from fedmcp.shared import buckets, bus, discovery, frontsession, logs, runner, telemetry
from fedmcp.shared.audit import Audit
from fedmcp.shared.grants import GrantStore
from fedmcp.shared.ops_http import bind, serve_ops
from fedmcp.shared.options import region_options
from fedmcp.shared.policy import PolicyStore
from fedmcp.shared.signals import stop_on_signals
from fedmcp.shared.subjects import DEFAULT_PREFIX, Subjects

log = structlog.get_logger("fedmcp.manager")


async def run_manager(
    nats_url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    region: buckets.Region = buckets.LOCAL,
    evict_after: float = 6.0,
    stop: anyio.Event | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    subjects = Subjects(prefix)
    nc = await bus.connect(nats_url, name="manager")
    try:
        js = nc.jetstream(timeout=5)
        registry = Registry(
            nc,
            subjects,
            await buckets.open_bucket(js, subjects, buckets.REGISTRY, region),
            await buckets.open_bucket(js, subjects, buckets.CATALOGS, region),
            evict_after=evict_after,
        )
        subs = [
            await nc.subscribe(subjects.announce_all(), cb=registry.on_announce),
            await nc.subscribe(subjects.heartbeat_all(), cb=registry.on_heartbeat),
            await nc.subscribe(subjects.goodbye_all(), cb=registry.on_goodbye),
        ]
        await nc.flush(timeout=5)
        micro = await discovery.register(
            nc, discovery.MANAGER, "0.1.0", {"prefix": prefix}, "fedmcp federation manager"
        )
        registry.leader = False  # until the lease says otherwise
        await registry.load()
        leases = await buckets.open_bucket(js, subjects, buckets.LEASES, region)
        # Where front sessions' own backing sessions are (affinity = "session"): edges write, and bind only.
        await buckets.open_bucket(js, subjects, buckets.PINS, region, max_age=buckets.PIN_MAX_AGE)
        # The region's security state lives where its managers put it; edges only bind to it.
        await PolicyStore.open(js, subjects, region, create=True)
        await GrantStore.open(js, subjects, region, os.environ.get("FEDMCP_REGIONS"), create=True)
        await Audit(nc, subjects, region, create=True).start()
        await frontsession.open_sessions(js, subjects, region, create=True)
        await frontsession.open_feed(js, subjects, region, create=True)
        me = micro.id

        async def leadership(leading: bool) -> None:
            if leading:
                await registry.lead()
            else:
                registry.leader = False

        stop = stop or anyio.Event()

        async def evictor() -> None:
            while True:
                await anyio.sleep(evict_after / 3)
                await registry.evict_silent()

        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: lease.hold(leases, me, leadership, task_status=task_status))
            tg.start_soon(evictor)
            log.info("manager running", prefix=prefix, leading=registry.leader)
            task_status.started()
            await stop.wait()
            tg.cancel_scope.cancel()
        for sub in subs:
            await sub.unsubscribe()
        await micro.stop()
    finally:
        with anyio.move_on_after(5, shield=True):
            await nc.drain()


async def _serve(
    nats_url: str, prefix: str, region: buckets.Region, evict_after: float, http: tuple[str, int] | None
) -> None:
    stop = anyio.Event()
    running = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, stop)
        if http is not None:

            def readiness() -> dict[str, bool]:
                return {"running": running.is_set()}

            tg.start_soon(partial(serve_ops, bind(*http), readiness, stop=stop))

        async def manager(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            await run_manager(
                nats_url, prefix=prefix, region=region, evict_after=evict_after, stop=stop, task_status=task_status
            )

        await tg.start(manager)
        running.set()
        await stop.wait()
        tg.cancel_scope.cancel()


@click.command()
@click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True)
@region_options
@click.option("--evict-after", default=6.0, show_default=True, help="Seconds of silence before an instance is removed.")
@click.option("--http-port", type=int, default=None, help="Serve /metrics, /healthz and /readyz on this port.")
@click.option("--http-host", default="127.0.0.1", show_default=True)
def main(
    nats_url: str, prefix: str, region: buckets.Region, evict_after: float, http_port: int | None, http_host: str
) -> None:
    """Run the federation manager (one region's control plane)."""
    logs.configure("manager", region=region.name)
    telemetry.configure("manager", region=region.name)
    http = (http_host, http_port) if http_port is not None else None
    runner.run(partial(_serve, nats_url, prefix, region, evict_after, http))


if __name__ == "__main__":
    main()
