"""The per-role NATS users of deploy/nats/accounts.conf: a federation of them works, and each
is held to its own subjects (docs/nats-permissions.md).

The server runs the real accounts.conf, included by a small wrapper config on a free port.
Permission violations reach a nats-py client asynchronously, through `error_cb`: each check
waits for that error (bounded), and `flush()` proves the absence of one, because the server
answers the PING only after it has processed, and refused or accepted, what came before.
The texts are the server's, as nats-py reports them: lower-cased (`$kv.…`, `_inbox.>`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from conftest import federation
from fedmcp.cli.inspect import read_state
from fedmcp.shared import buckets, bus, discovery, headers, metrics
from fedmcp.shared.config import load_toml
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.subjects import Subjects
from mcp import Client
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KeyValue

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
ACCOUNTS = ROOT / "deploy" / "nats" / "accounts.conf"
REGISTRY = Subjects().bucket(buckets.REGISTRY, buckets.LOCAL.name)  # fedmcp_registry_local
CATALOGS = Subjects().bucket(buckets.CATALOGS, buckets.LOCAL.name)


@dataclass
class Secured:
    nats: NatsServer
    monitor: str
    """The server's monitoring endpoint (connz names each connection's user)."""

    def url(self, user: str) -> str:
        """The NATS URL of one of accounts.conf's users (their development passwords are `<user>-secret`)."""
        return f"nats://{user}:{user}-secret@{self.nats.host}:{self.nats.port}"

    def log(self) -> str:
        return (self.nats.data_dir / "nats-server.log").read_text()


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Secured]:
    """One nats-server running deploy/nats/accounts.conf, as the cluster and supercluster files do."""
    data = tmp_path / "nats"
    data.mkdir()
    port, monitor = free_port(), free_port()
    conf = data / "secured.conf"
    # An include is resolved against the including file's directory.
    conf.write_text(
        f'server_name: secured\nlisten: "127.0.0.1:{port}"\nhttp: "127.0.0.1:{monitor}"\nmax_payload: 1MB\n'
        f'jetstream {{ store_dir: "{data / "jetstream"}" }}\n'
        f'include "{os.path.relpath(ACCOUNTS, data)}"\n'
    )
    # Every per-role user may subscribe to `_INBOX.<user>.>` only.
    monkeypatch.setenv(bus.INBOX_PREFIX_ENV, "_INBOX.{user}")
    with NatsServer(data, port=port, config_file=conf) as server:
        yield Secured(server, f"http://127.0.0.1:{monitor}")


def bus_errors() -> float:
    """Errors every bus connection of this process has reported so far (fedmcp_bus_errors_total)."""
    return sum(s.value for m in metrics.BUS_ERRORS.collect() for s in m.samples if s.name.endswith("_total"))


@asynccontextmanager
async def connected(server: Secured, user: str) -> AsyncIterator[tuple[NATS, MemoryObjectReceiveStream[str]]]:
    """A bus connection as `user`, and the errors the server reports to it, in order."""
    send, receive = anyio.create_memory_object_stream[str](16)

    async def error_cb(exc: Exception) -> None:
        send.send_nowait(str(exc))

    nc = await bus.connect(server.url(user), name=f"test-{user}", error_cb=error_cb)
    try:
        yield nc, receive
    finally:
        await nc.close()
        send.close()
        receive.close()


async def refused(errors: MemoryObjectReceiveStream[str]) -> str:
    with anyio.fail_after(5):
        return await errors.receive()


async def accepted(nc: NATS, errors: MemoryObjectReceiveStream[str]) -> None:
    await nc.flush(timeout=5)
    with pytest.raises(anyio.WouldBlock):
        errors.receive_nowait()


def test_inbox_prefix_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bus.INBOX_PREFIX_ENV, raising=False)
    assert bus.inbox_prefix("nats://edge:pw@h:4222") is None  # nats-py's default, as before
    monkeypatch.setenv(bus.INBOX_PREFIX_ENV, "_INBOX.{user}")
    assert bus.inbox_prefix("nats://adapter-time:pw@a:4222,nats://adapter-time:pw@b:4222") == "_INBOX.adapter-time"
    with pytest.raises(ValueError, match="needs a user name"):
        bus.inbox_prefix("nats://a:4222")
    monkeypatch.setenv(bus.INBOX_PREFIX_ENV, "_INBOX.edge")
    assert bus.inbox_prefix("nats://a:4222") == "_INBOX.edge"
    monkeypatch.setenv(bus.INBOX_PREFIX_ENV, "_INBOX.*")
    with pytest.raises(ValueError, match="without wildcards"):
        bus.inbox_prefix("nats://a:4222")


async def test_a_federation_of_per_role_users_serves_the_example_servers(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example fedmcp.toml's servers, found where this interpreter's scripts are installed.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    servers = load_toml(ROOT / "fedmcp.toml").servers
    assert set(servers) == {"time", "demo"}  # one adapter user each in accounts.conf
    errors_before = bus_errors()
    # role_url gives every connection of the federation its role's user; the first URL (the
    # development superuser) is not used.
    async with federation(secured.url("fedmcp"), role_url=secured.url, max_body_bytes=8 * 1024 * 1024) as fed:
        for name, server in servers.items():
            await fed.add_server(name, server)
        async with Client(fed.url) as client:
            result = await client.call_tool("time_get_current_time", {"timezone": "Europe/Paris"})
            assert not result.is_error
            assert "Europe/Paris" in json.dumps(result.structured_content)
            result = await client.call_tool("demo_add", {"a": 20, "b": 22})
            assert result.structured_content == {"result": 42}
            # Bigger than one message (max_payload 1MB) both ways: the adapter pulls the request's
            # pieces through its own inbox and sends the result in chunk frames.
            text = "x" * (3 * 1024 * 1024 // 2)
            result = await client.call_tool("demo_echo", {"text": text})
            assert result.structured_content == {"result": text}
        # Each service is connected as its role's user, as the server sees it.
        assert fed.edge is not None
        async with httpx2.AsyncClient(timeout=10) as http:
            connz = (await http.get(f"{secured.monitor}/connz?auth=true")).json()
        assert {c["name"]: c["authorized_user"] for c in connz["connections"]} == {
            "manager": "manager",
            fed.edge.edge_id: "edge",
            "test-adapter-time": "adapter-time",
            "test-adapter-demo": "adapter-demo",
        }
        # The edge's ping reaches the adapter, whose answer goes out under allow_responses.
        time_instance = fed.adapters["time"][0].instance.instance
        answer = await fed.edge.nc.request(
            Subjects().ping("time", time_instance), b"fedmcp.reply.nobody.1", timeout=5, headers=headers.base()
        )
        assert answer.data == b"0"
        # The read-only operator user sees the federation: registry and catalogs, $SRV discovery.
        catalogs, instances = await read_state(secured.url("ops"), "fedmcp")
        assert set(catalogs) == {"time", "demo"}
        assert sorted(i.server for i in instances) == ["demo", "time"]
        async with connected(secured, "ops") as (nc, errors):
            adapters = await discovery.ping_all(nc, discovery.ADAPTER, expected=2)
            managers = await discovery.ping_all(nc, discovery.MANAGER, expected=1)
            assert sorted(a["metadata"]["server"] for a in adapters) == ["demo", "time"]
            assert len(managers) == 1
            await accepted(nc, errors)
    # Not one permission violation anywhere in the federation's run, as the services saw it
    # and as the server logged it.
    assert bus_errors() == errors_before
    assert "Violation" not in secured.log()


async def test_an_adapter_user_is_held_to_its_own_server(secured: Secured) -> None:
    async with connected(secured, "manager") as (manager, _):
        # The buckets exist (the manager creates them), so every refusal below is a permission.
        await buckets.open_bucket(manager.jetstream(timeout=5), Subjects(), buckets.REGISTRY, buckets.LOCAL)
    async with connected(secured, "adapter-time") as (nc, errors):
        # What an adapter of "time" does is allowed.
        await nc.subscribe("fedmcp.rpc.time", queue="fedmcp.adapter.time")
        await nc.subscribe("fedmcp.ctl.cancel.time")
        await nc.publish("fedmcp.evt.heartbeat.time.i1", b"")
        await accepted(nc, errors)
        # Another server's requests, even in that server's own queue group.
        await nc.subscribe("fedmcp.rpc.demo")
        assert await refused(errors) == 'nats: permissions violation for subscription to "fedmcp.rpc.demo"'
        await nc.subscribe("fedmcp.rpc.demo", queue="fedmcp.adapter.demo")
        assert (
            await refused(errors)
            == 'nats: permissions violation for subscription to "fedmcp.rpc.demo" using queue "fedmcp.adapter.demo"'
        )
        # Its own server's requests outside the queue group (every request, not its share) ...
        await nc.subscribe("fedmcp.rpc.time")
        assert await refused(errors) == 'nats: permissions violation for subscription to "fedmcp.rpc.time"'
        # ... or in another group.
        await nc.subscribe("fedmcp.rpc.time", queue="eavesdrop")
        assert (
            await refused(errors)
            == 'nats: permissions violation for subscription to "fedmcp.rpc.time" using queue "eavesdrop"'
        )
        # Inboxes other than its own: they carry other adapters' upload pieces and sampling answers.
        await nc.subscribe("_INBOX.>")
        assert await refused(errors) == 'nats: permissions violation for subscription to "_inbox.>"'
        # Speaking for another server.
        await nc.publish("fedmcp.evt.announce.demo.i1", b"")
        assert await refused(errors) == 'nats: permissions violation for publish to "fedmcp.evt.announce.demo.i1"'
        # Writing the registry: a KV put is a publish on $KV.<bucket>.<key>, refused; no PubAck comes.
        js = nc.jetstream(timeout=1)
        registry = KeyValue(name=REGISTRY, stream=f"KV_{REGISTRY}", pre=f"$KV.{REGISTRY}.", js=js, direct=True)
        with pytest.raises(NatsTimeoutError):
            await registry.put("time.forged", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{REGISTRY}.time.forged"'
        # Nor may it use the JetStream API on the bucket at all.
        with pytest.raises(NatsTimeoutError):
            await js.key_value(REGISTRY)
        assert (
            await refused(errors) == f'nats: permissions violation for publish to "$js.api.stream.info.kv_{REGISTRY}"'
        )
        await accepted(nc, errors)  # nothing else was refused
    async with connected(secured, "fedmcp") as (admin, _):
        stored = await buckets.read_all(admin.jetstream(timeout=5), await admin.jetstream().key_value(REGISTRY))
        assert stored == {}


async def test_an_edge_user_cannot_announce_or_write_catalogs(secured: Secured) -> None:
    async with connected(secured, "fedmcp") as (watcher, _), connected(secured, "edge") as (nc, errors):
        seen: list[str] = []
        marker = anyio.Event()

        async def on_message(msg: Msg) -> None:
            seen.append(msg.subject)
            if msg.subject == "fedmcp.ctl.cancel.time":
                marker.set()

        await watcher.subscribe("fedmcp.>", cb=on_message)
        await watcher.flush(timeout=5)
        await nc.publish("fedmcp.evt.announce.time.forged", b"{}", headers=headers.base())
        assert await refused(errors) == 'nats: permissions violation for publish to "fedmcp.evt.announce.time.forged"'
        await nc.publish("fedmcp.evt.heartbeat.time.forged", b"{}", headers=headers.base())
        assert await refused(errors) == 'nats: permissions violation for publish to "fedmcp.evt.heartbeat.time.forged"'
        await nc.publish(f"$KV.{CATALOGS}.time", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{CATALOGS}.time"'
        # An edge may cancel; the server handles one connection's messages in order, so had
        # the announcement or heartbeat gone out, the watcher would have seen it first.
        await nc.publish("fedmcp.ctl.cancel.time", b"fedmcp.reply.e.1", headers=headers.base())
        await accepted(nc, errors)
        with anyio.fail_after(5):
            await marker.wait()
        assert seen == ["fedmcp.ctl.cancel.time"]
        # Nor may an edge take an adapter's place.
        await nc.subscribe("fedmcp.rpc.time", queue="fedmcp.adapter.time")
        assert (
            await refused(errors)
            == 'nats: permissions violation for subscription to "fedmcp.rpc.time" using queue "fedmcp.adapter.time"'
        )


async def test_the_ops_user_only_reads(secured: Secured) -> None:
    async with connected(secured, "ops") as (nc, errors):
        await nc.publish(f"$KV.{CATALOGS}.time", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{CATALOGS}.time"'
        await nc.publish(f"$JS.API.STREAM.CREATE.KV_{CATALOGS}", b"{}")
        assert (
            await refused(errors) == f'nats: permissions violation for publish to "$js.api.stream.create.kv_{CATALOGS}"'
        )
        await nc.subscribe("fedmcp.>")
        assert await refused(errors) == 'nats: permissions violation for subscription to "fedmcp.>"'


async def test_edges_record_grants_and_audit_events_that_managers_set_up(secured: Secured) -> None:
    """The security state: the manager creates the policy and grants buckets, the grant view and the
    audit stream; an edge reads and watches the policy, records grants and its own decisions; an
    adapter records refusals only."""
    from fedmcp.shared.audit import Audit, AuditEvent
    from fedmcp.shared.grants import GrantStore
    from fedmcp.shared.policy import Policy, PolicyStore

    subjects = Subjects()
    region = buckets.LOCAL
    policy_bucket = subjects.bucket(buckets.POLICY, region.name)
    grants_bucket = subjects.bucket(buckets.GRANTS, region.name)
    audit_stream = subjects.audit_stream(region.name)

    def audit_failures() -> float:
        return sum(s.value for m in metrics.AUDIT_FAILURES.collect() for s in m.samples if s.name.endswith("_total"))

    failures_before = audit_failures()
    async with connected(secured, "manager") as (nc, errors):
        js = nc.jetstream(timeout=5)
        await PolicyStore.open(js, subjects, region, create=True)
        await GrantStore.open(js, subjects, region, create=True)
        await Audit(nc, subjects, region, create=True).start()
        # A region configured later is added to the grant view's sources.
        await GrantStore.open(js, subjects, region, "east", create=True)
        view = await js.stream_info(f"KV_{subjects.bucket(buckets.GRANTVIEW, region.name)}")
        assert sorted(src.name for src in view.config.sources or []) == ["KV_fedmcp_grants_east", f"KV_{grants_bucket}"]
        await accepted(nc, errors)
        # It creates them, but writes no grant and no policy.
        await nc.publish(f"$KV.{grants_bucket}.forged", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{grants_bucket}.forged"'
        await nc.publish(f"$KV.{policy_bucket}.current", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{policy_bucket}.current"'

    async with (
        connected(secured, "edge") as (nc, errors),
        connected(secured, "edge") as (other, other_errors),
        connected(secured, "fedmcp") as (admin, _),
        anyio.create_task_group() as tg,
    ):
        js = nc.jetstream(timeout=5)
        policy = await PolicyStore.open(js, subjects, region, create=False, patience=5)
        store = await GrantStore.open(js, subjects, region, create=False, patience=5, edge="e1")
        await tg.start(policy.run)
        await tg.start(store.run)
        # A second edge sees the first one's grant through the view (watch or catch-up).
        seen = await GrantStore.open(other.jetstream(timeout=5), subjects, region, create=False, patience=5)
        await tg.start(seen.run)
        await store.grant("alice", "time", "get_current_time")
        with anyio.fail_after(10):
            await seen.wait_until(lambda s: s.has("alice", "time", "get_current_time"))
        # An operator's policy change reaches the edge's watch.
        operator = await PolicyStore.open(admin.jetstream(timeout=5), subjects, region, create=False)
        changed = anyio.Event()

        async def on_policy(_: Policy) -> None:
            changed.set()

        policy.on_change(on_policy)
        revision = await operator.set(Policy(default="deny"))
        with anyio.fail_after(10):
            await changed.wait()
        assert policy.revision == revision
        assert policy.current.default == "deny"
        # The decisions an edge makes go to the audit stream.
        audit = Audit(nc, subjects, region, edge="e1", create=False, patience=5)
        await audit.start()
        for kind in ("allowed", "denied", "consent.asked", "consent.granted", "consent.declined"):
            await audit.record(AuditEvent(kind=kind, principal="alice", server="time"))
        assert await audit.flush()
        await accepted(nc, errors)
        await accepted(other, other_errors)
        assert audit_failures() == failures_before
        # Not the operators' events, nor the policy, nor streams of its own.
        await nc.publish(subjects.audit(region.name, "policy.changed"), b"{}")
        assert (
            await refused(errors)
            == f'nats: permissions violation for publish to "{subjects.audit(region.name, "policy.changed")}"'
        )
        await nc.publish(f"$KV.{policy_bucket}.current", b"{}")
        assert await refused(errors) == f'nats: permissions violation for publish to "$kv.{policy_bucket}.current"'
        await nc.publish(f"$JS.API.STREAM.CREATE.KV_{grants_bucket}", b"{}")
        assert (
            await refused(errors)
            == f'nats: permissions violation for publish to "$js.api.stream.create.kv_{grants_bucket}"'
        )
        await nc.publish(f"$JS.API.STREAM.DELETE.{audit_stream}", b"")
        assert (
            await refused(errors)
            == f'nats: permissions violation for publish to "$js.api.stream.delete.{audit_stream.lower()}"'
        )
        tg.cancel_scope.cancel()

    async with connected(secured, "adapter-time") as (nc, errors):
        audit = Audit(nc, subjects, region, edge="a1", create=False, patience=5)
        await audit.start()
        await audit.record(AuditEvent(kind="denied", server="time", outcome="identity"))
        assert await audit.flush()
        await accepted(nc, errors)
        await nc.publish(subjects.audit(region.name, "allowed"), b"{}")
        assert (
            await refused(errors)
            == f'nats: permissions violation for publish to "{subjects.audit(region.name, "allowed")}"'
        )
    async with connected(secured, "fedmcp") as (admin, _):
        info = await admin.jetstream(timeout=5).stream_info(audit_stream)
        assert info.state.messages == 6
    assert audit_failures() == failures_before
