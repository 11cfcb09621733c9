"""Everything an edge needs before it can serve: NATS, the live catalog, the upstream client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from fedmcp.edge.auth import ANONYMOUS
from fedmcp.edge.catalog import CatalogView
from fedmcp.edge.feed import Feed
from fedmcp.edge.governance import Governance
from fedmcp.edge.server import FederatedServer
from fedmcp.edge.session_directory import SessionDirectory
from fedmcp.edge.upstream import Upstream
from fedmcp.shared import buckets, bus, frontsession, identity
from fedmcp.shared.audit import Audit
from fedmcp.shared.grants import GrantStore
from fedmcp.shared.identity import Signer
from fedmcp.shared.policy import PolicyStore, Principal
from fedmcp.shared.subjects import DEFAULT_PREFIX, Subjects
from nats.aio.client import Client as NATS


@dataclass
class Edge:
    nc: NATS
    view: CatalogView
    upstream: Upstream
    federated: FederatedServer
    edge_id: str
    directory: SessionDirectory
    feed: Feed
    http_sessions: Any = None
    """The Streamable HTTP session manager (sessions.FederatedSessionManager) once the HTTP face is built."""


def new_edge_id() -> str:
    return f"edge-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def edge_runtime(
    nats_url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    request_timeout: float = 60.0,
    accept_timeout: float = 2.0,
    overload_wait: float = 5.0,
    edge_id: str | None = None,
    region: buckets.Region = buckets.LOCAL,
    sse_poll_after: float | None = None,
    local_principal: Principal = ANONYMOUS,
    identity_key: str | None = None,
    regions: str | None = None,
) -> AsyncIterator[Edge]:
    """`identity_key`: the Ed25519 key (PEM file) that signs callers' identities for adapters (default
    `FEDMCP_IDENTITY_KEY`); `regions`: every region whose consent grants this edge honours
    (default `FEDMCP_REGIONS`, else only its own)."""
    subjects = Subjects(prefix)
    edge_id = edge_id or new_edge_id()
    nc = await bus.connect(nats_url, name=edge_id)
    try:
        js = nc.jetstream(timeout=5)
        # The region's managers create these; an edge only binds (and waits for a manager to start).
        kv = await buckets.open_bucket(js, subjects, buckets.CATALOGS, region, create=False, patience=120)
        key_file = identity_key or os.environ.get("FEDMCP_IDENTITY_KEY")
        governance = Governance(
            policy=await PolicyStore.open(js, subjects, region, create=False, patience=120),
            grants=await GrantStore.open(
                js,
                subjects,
                region,
                regions or os.environ.get("FEDMCP_REGIONS"),
                create=False,
                patience=120,
                edge=edge_id,
            ),
            signer=Signer(identity.load_private_key(key_file), issuer=edge_id) if key_file else None,
            audit=Audit(nc, subjects, region, edge=edge_id, create=False),
            edge=edge_id,
        )
        assert governance.audit is not None
        await governance.audit.start()
        view = CatalogView(kv)
        directory = SessionDirectory(await frontsession.open_sessions(js, subjects, region, create=False, patience=120))
        feed = Feed(
            js, subjects, region, await frontsession.open_feed(js, subjects, region, create=False, patience=120)
        )

        async def feed_list_changes(kinds: frozenset[str]) -> None:
            if view.loaded.is_set():  # not the first load: that is no change to anyone
                await feed.list_changed(kinds, view.revision)

        view.on_change(feed_list_changes)
        upstream = Upstream(
            nc,
            subjects,
            edge_id,
            accept_timeout=accept_timeout,
            request_timeout=request_timeout,
            overload_wait=overload_wait,
        )
        await upstream.start()
        federated = FederatedServer(
            view,
            upstream,
            sse_poll_after=sse_poll_after,
            governance=governance,
            local_principal=local_principal,
            directory=directory,
        )
        federated.subscriptions.feed = feed
        federated.pins.kv = await buckets.open_bucket(js, subjects, buckets.PINS, region, create=False, patience=120)
        await federated.subscriptions.start(subjects)
        async with anyio.create_task_group() as tg:
            await tg.start(view.run)
            await tg.start(federated.pins.run)
            await tg.start(directory.run)
            await tg.start(feed.run)
            assert governance.policy is not None and governance.grants is not None
            await tg.start(governance.policy.run)
            await tg.start(governance.grants.run)
            with anyio.fail_after(10):
                await view.loaded.wait()
            try:
                yield Edge(nc, view, upstream, federated, edge_id, directory, feed)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await federated.release_local_sessions()
                    await governance.audit.flush(timeout=2)  # the last batch of allowed calls
            tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(5, shield=True):
            await nc.drain()
