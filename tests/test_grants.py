"""Consent grants on real nats-servers: one region, then two regions joined by a gateway that
the test cuts and heals (two one-server clusters, one JetStream domain, generated on free ports)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import msgspec
import pytest
from fedmcp.shared import bus, headers
from fedmcp.shared.buckets import LOCAL, Region
from fedmcp.shared.buckets import key_token as token
from fedmcp.shared.grants import Grant, GrantStore, grant_key, parse_regions
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.subjects import Subjects
from netlink import Link
from procs import fedmcp

pytestmark = pytest.mark.anyio
SUBJECTS = Subjects()
ALICE = "alice@example.com"  # not a subject token: the key encodes it


def test_keys_are_subject_safe_and_distinct() -> None:
    assert token("github") == "github" and token("merge_pr-2") == "merge_pr-2"
    odd = ["alice@example.com", "a.b", "*", ">", "a b", "é", "x" * 65, "y" * 500]
    tokens = [token(v) for v in odd]
    assert len(set(tokens)) == len(odd)
    assert all(t.startswith("=") and "." not in t and "*" not in t and ">" not in t for t in tokens)
    assert len(token("y" * 500)) < 50
    assert grant_key(ALICE, "github", None).endswith(".=all")
    assert grant_key(ALICE, "github", "*") != grant_key(ALICE, "github", None)  # a tool named "*"
    assert parse_regions("west, east,west", "east") == ["west", "east"]
    assert parse_regions(None, "local") == ["local"]
    with pytest.raises(ValueError):
        parse_regions("east.1", "west")


@asynccontextmanager
async def stores(
    url: str, n: int, region: Region = LOCAL, regions: str = "", resync_interval: float | None = 2.0
) -> AsyncIterator[list[GrantStore]]:
    """`n` running stores, each on its own connection (as `n` edges would be)."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        opened = []
        for i in range(n):
            nc = await bus.connect(url, name=f"test-grants-{region.name}-{i}")
            stack.push_async_callback(nc.close)
            js = nc.jetstream(timeout=5)
            store = await GrantStore.open(
                js, SUBJECTS, region, regions, edge=f"edge-{i}", resync_interval=resync_interval
            )
            await tg.start(store.run)
            opened.append(store)
        yield opened
        tg.cancel_scope.cancel()


async def until(store: GrantStore, predicate: Callable[[GrantStore], bool], timeout: float) -> None:
    with anyio.fail_after(timeout):
        await store.wait_until(predicate)


async def test_a_grant_reaches_another_edge_and_a_revocation_ends_it_within_a_second(nats_server: NatsServer) -> None:
    async with stores(nats_server.url, 2) as (a, b):
        grant = await a.grant(ALICE, "github", "merge_pr", ttl=3600)
        assert a.has(ALICE, "github", "merge_pr")  # the writer reads its own write
        await until(b, lambda s: s.has(ALICE, "github", "merge_pr"), 2)
        assert not b.has(ALICE, "github", "delete_repo") and not b.has("bob", "github", "merge_pr")
        assert b.list(ALICE) == [grant] and grant.origin == "local" and grant.edge == "edge-0"

        assert await b.revoke(ALICE, "github", "merge_pr") == 1
        assert not b.has(ALICE, "github", "merge_pr")
        await until(a, lambda s: not s.has(ALICE, "github", "merge_pr"), 1)
        [tombstone] = a.list(ALICE)
        assert tombstone.revoked and tombstone.origin == "local" and tombstone.revoked_at > grant.granted_at
        assert a.list(ALICE, active_only=True) == []


async def test_expiry_and_scopes(nats_server: NatsServer) -> None:
    async with stores(nats_server.url, 2) as (a, b):
        grant = await a.grant(ALICE, "fs", "write", ttl=60)
        await until(b, lambda s: s.has(ALICE, "fs", "write"), 2)
        assert b.has(ALICE, "fs", "write", now=grant.expires_at - 1)
        assert not b.has(ALICE, "fs", "write", now=grant.expires_at + 0.001)  # expired
        assert b.list(ALICE, active_only=True, now=grant.expires_at + 1) == []

        # A server-wide grant covers every tool of the server; a tool revocation ends it for that tool only.
        await a.grant(ALICE, "wiki")
        await until(b, lambda s: s.has(ALICE, "wiki", "edit") and s.has(ALICE, "wiki", "delete"), 2)
        assert b.has(ALICE, "wiki", None) and not b.has(ALICE, "fs", None)
        assert await b.revoke(ALICE, "wiki", "delete") == 1
        await until(a, lambda s: not s.has(ALICE, "wiki", "delete"), 1)
        assert a.has(ALICE, "wiki", "edit")

        # A server-wide revocation ends the tool grants of the server made before it.
        await a.grant(ALICE, "fs", "read")
        await until(b, lambda s: s.has(ALICE, "fs", "read"), 2)
        assert await b.revoke(ALICE, "fs") == 2  # write and read
        await until(a, lambda s: not s.has(ALICE, "fs", "read") and not s.has(ALICE, "fs", "write"), 1)
        await a.grant(ALICE, "fs", "read")  # consent again: stamped after the revocation
        await until(b, lambda s: s.has(ALICE, "fs", "read"), 2)
        assert not b.has(ALICE, "fs", "write")


async def test_a_consent_event_can_end_access_but_never_grant_it(nats_server: NatsServer) -> None:
    async with stores(nats_server.url, 1) as (edge,):
        real = await edge.grant(ALICE, "github", "merge_pr")
        nc = await bus.connect(nats_server.url, name="test-forger")
        try:
            now = time.time()
            forged = Grant(
                principal="mallory",
                server="github",
                tool="merge_pr",
                scope="tool",
                granted_at=now,
                expires_at=now + 3600,
                origin="local",
                id="forged",
            )
            tombstone = msgspec.structs.replace(real, revoked=True, revoked_at=now + 1, id="forged-revocation")
            for grant in (forged, tombstone):  # in order, on one subject: the first is handled first
                payload = msgspec.json.encode([grant])
                await nc.publish(SUBJECTS.consent_changed("local"), payload, headers=headers.base())
            await until(edge, lambda s: not s.has(ALICE, "github", "merge_pr"), 1)
            assert not edge.has("mallory", "github", "merge_pr")
        finally:
            await nc.close()


async def test_the_view_gains_the_sources_of_new_regions(nats_server: NatsServer) -> None:
    nc = await bus.connect(nats_server.url, name="test-view")
    try:
        js = nc.jetstream(timeout=5)
        await GrantStore.open(js, SUBJECTS, Region("south"))
        await GrantStore.open(js, SUBJECTS, Region("south"), "north,south")
        await GrantStore.open(js, SUBJECTS, Region("south"), "north", create=False)  # never drops one
        info = await js.stream_info("KV_fedmcp_grantview_south")
        assert sorted(s.name for s in info.config.sources or []) == ["KV_fedmcp_grants_north", "KV_fedmcp_grants_south"]
        transform = next(s for s in info.config.sources or [] if s.name.endswith("north")).subject_transforms
        assert transform is not None
        assert [(t.src, t.dest) for t in transform] == [
            ("$KV.fedmcp_grants_north.>", "$KV.fedmcp_grantview_south.north.>")
        ]
    finally:
        await nc.close()


async def cli(*args: str) -> str:
    result = await anyio.run_process(fedmcp(*args), check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_cli_consent_list_and_revoke(nats_server: NatsServer) -> None:
    url = ["--nats-url", nats_server.url]
    async with stores(nats_server.url, 1) as (edge,):
        await edge.grant(ALICE, "github", "merge_pr")
        await edge.grant("bob", "github")
        listed = json.loads(await cli("consent", "list", "--json", *url))
        assert {(g["principal"], g["tool"], g["state"]) for g in listed} == {
            (ALICE, "merge_pr", "active"),
            ("bob", "*", "active"),
        }
        table = await cli("consent", "list", "--principal", "bob", *url)
        assert "bob" in table and ALICE not in table
        out = await cli("consent", "revoke", "--principal", ALICE, "--server", "github", *url)
        assert "revoked 1 live grant(s) of alice@example.com on github (every tool)" in out
        await until(edge, lambda s: not s.has(ALICE, "github", "merge_pr"), 1)
        assert edge.has("bob", "github", "merge_pr")
        listed = json.loads(await cli("consent", "list", "--json", "--active", *url))
        assert [(g["principal"], g["state"]) for g in listed] == [("bob", "active")]


# -- two regions ---------------------------------------------------------------------

CRED = "fedmcp:fedmcp-secret@"


@dataclass
class TwoRegions:
    urls: dict[str, str]
    gateways: list[Link]

    def region(self, name: str) -> Region:
        return Region(name, name, 1)  # placed on the region's own cluster

    def cut(self) -> None:
        for link in self.gateways:
            link.cut()

    def heal(self) -> None:
        for link in self.gateways:
            link.heal()


def server_conf(region: str, client: int, route: int, gateway_listen: int, advertised: dict[str, int]) -> str:
    gateways = ", ".join(f'{{ name: {r}, urls: ["nats://127.0.0.1:{p}"] }}' for r, p in advertised.items())
    return f"""server_name: {region}-1
listen: 127.0.0.1:{client}
jetstream {{ store_dir: "./jetstream", domain: hub }}
cluster {{ name: {region}, listen: 127.0.0.1:{route}, routes: ["nats-route://127.0.0.1:{route}"] }}
gateway {{
  name: {region}
  listen: 127.0.0.1:{gateway_listen}
  advertise: "127.0.0.1:{advertised[region]}"
  gateways: [ {gateways} ]
}}
accounts {{
  SYS: {{ users: [ {{ user: sys, password: sys-secret }} ] }}
  APP: {{ jetstream: enabled, users: [ {{ user: fedmcp, password: fedmcp-secret }} ] }}
}}
system_account: SYS
"""


@pytest.fixture(scope="module")
def two_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    """east-1 and west-1: each its own cluster, joined by a gateway that runs through a Link."""
    work = tmp_path_factory.mktemp("two-regions")
    regions = ["east", "west"]
    advertised = {r: free_port() for r in regions}
    listen = {r: free_port() for r in regions}
    links = [Link(advertised[r], listen[r]) for r in regions]
    servers = []
    try:
        for r in regions:
            client, route = free_port(), free_port()
            (work / r).mkdir()
            conf = work / r / "nats.conf"
            conf.write_text(server_conf(r, client, route, listen[r], advertised))
            servers.append(NatsServer(work / r, port=client, config_file=conf).start())
        yield TwoRegions({r: f"nats://{CRED}127.0.0.1:{s.port}" for r, s in zip(regions, servers, strict=True)}, links)
    finally:
        for s in servers:
            s.stop()
        for link in links:
            link.close()


@asynccontextmanager
async def east_and_west(topo: TwoRegions) -> AsyncIterator[tuple[GrantStore, GrantStore]]:
    async with (
        stores(topo.urls["east"], 1, topo.region("east"), "east,west") as (east,),
        stores(topo.urls["west"], 1, topo.region("west"), "east,west") as (west,),
    ):
        yield east, west


async def test_grants_and_revocations_cross_regions(two_regions: TwoRegions) -> None:
    async with east_and_west(two_regions) as (east, west):
        await east.grant(ALICE, "github", "merge_pr")
        await until(west, lambda s: s.has(ALICE, "github", "merge_pr"), 5)
        assert west.list(ALICE)[0].origin == "east"
        await west.revoke(ALICE, "github", "merge_pr")
        await until(east, lambda s: not s.has(ALICE, "github", "merge_pr"), 1)


async def test_a_partition_keeps_each_view_readable_and_heals_by_last_writer(two_regions: TwoRegions) -> None:
    carol, dave = "carol", "dave"
    west_url, region = two_regions.urls["west"], two_regions.region("west")
    async with (
        east_and_west(two_regions) as (east, west),
        stores(west_url, 1, region, "east,west", resync_interval=None) as (view_only,),
    ):
        for who in (carol, dave):
            await east.grant(who, "deploy", "release")
        # Without catch-up reads, this store learns only from west's view: once it has both, so has the view.
        await until(view_only, lambda s: s.has(carol, "deploy", "release") and s.has(dave, "deploy", "release"), 5)
        two_regions.cut()
        try:
            # West's view of east's grants answers without east, and without a JetStream meta leader.
            west_args = ["--region", "west", "--js-cluster", "west", "--regions", "east,west"]
            listed = json.loads(
                await cli("consent", "list", "--json", "--nats-url", two_regions.urls["west"], *west_args)
            )
            assert {(g["principal"], g["origin"], g["state"]) for g in listed if g["server"] == "deploy"} == {
                (carol, "east", "active"),
                (dave, "east", "active"),
            }
            assert east.has(carol, "deploy", "release") and west.has(carol, "deploy", "release")
            # A store that starts now (an edge restarting) serves west's view too.
            async with stores(west_url, 1, region, "east,west") as (late,):
                assert late.has(carol, "deploy", "release") and late.has(dave, "deploy", "release")
            # Concurrent writes on both sides: east consents again, then west revokes (carol);
            # west revokes, then east consents again (dave).
            await east.grant(carol, "deploy", "release")
            await west.revoke(carol, "deploy", "release")
            await west.revoke(dave, "deploy", "release")
            await east.grant(dave, "deploy", "release")
            assert east.has(carol, "deploy", "release") and not west.has(carol, "deploy", "release")
            assert east.has(dave, "deploy", "release") and not west.has(dave, "deploy", "release")
        finally:
            two_regions.heal()

        # Healed: the later write wins on both sides.
        def converged(s: GrantStore) -> bool:
            return not s.has(carol, "deploy", "release") and s.has(dave, "deploy", "release")

        await until(east, converged, 20)
        await until(west, converged, 20)
        mine = [[g for g in s.list() if g.server == "deploy"] for s in (east, west)]
        assert mine[0] == mine[1] and [(g.principal, g.revoked) for g in mine[0]] == [(carol, True), (dave, False)]
        assert [g.origin for g in mine[0]] == ["west", "east"]
