"""Pure functions and files: names, routing conflicts, cursors, configuration, NATS configs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from fedmcp.edge.guard import shape_error
from fedmcp.edge.pagination import page
from fedmcp.shared import jsonrpc, routing
from fedmcp.shared.config import load_mcp_json, load_toml
from fedmcp.shared.envelopes import Catalog, CatalogEntry, ServerSettings
from fedmcp.shared.natsserver import binary
from fedmcp.shared.subjects import Subjects
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).parent.parent
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [("time", "get_current_time", "time_get_current_time"), ("", "add", "add"), ("gh", "repo-list", "gh_repo-list")],
)
def test_exposed_name_plain(prefix: str, name: str, expected: str) -> None:
    assert routing.exposed_name(prefix, name) == expected


@pytest.mark.parametrize("name", ["a.b/c", "x" * 200, "tool with spaces", "ünïcode"])
def test_exposed_name_always_fits_mainstream_clients(name: str) -> None:
    exposed = routing.exposed_name("srv", name)
    assert NAME.match(exposed)
    assert exposed != routing.exposed_name("srv", name + "!")  # distinct originals stay distinct


def _entry(server: str, tools: list[str], prefix: str | None = None, resources: list[str] = ()) -> CatalogEntry:  # type: ignore[assignment]
    cat = Catalog(
        server=server,
        protocol_version="2025-11-25",
        tools=[{"name": t, "inputSchema": {"type": "object"}} for t in tools],
        resources=[{"uri": u, "name": u} for u in resources],
    )
    return CatalogEntry(catalog=cat, digest=cat.digest(), settings=ServerSettings(prefix=prefix))


def test_routing_is_deterministic_and_reports_every_conflict() -> None:
    entries = {
        "b": _entry("b", ["x", "y"], prefix="", resources=["file:///a"]),
        "a": _entry("a", ["x"], prefix="", resources=["file:///a"]),
    }
    table = routing.build(entries)
    assert routing.build(dict(reversed(entries.items()))).tool_list == table.tool_list
    assert table.tools["x"] == routing.Route("a", "x")
    renamed = [n for n, r in table.tools.items() if r == routing.Route("b", "x")]
    assert len(renamed) == 1 and NAME.match(renamed[0])
    assert len(table.tool_list) == 3
    assert table.resources["file:///a"].server == "a"
    assert len(table.conflicts) == 2


def test_the_one_unprefixed_server_owns_unlisted_bare_names() -> None:
    alone = routing.build({"m": _entry("m", ["listed"], prefix=""), "p": _entry("p", ["t"])})
    assert alone.tool_route("listed") == routing.Route("m", "listed")
    assert alone.tool_route("unlisted") == routing.Route("m", "unlisted")  # passed to the bare server
    assert alone.tool_route("p_t") == routing.Route("p", "t")
    both_bare = routing.build({"a": _entry("a", ["x"], prefix=""), "b": _entry("b", ["y"], prefix="")})
    assert both_bare.tool_route("unlisted") is None  # ambiguous: nobody owns the bare namespace
    prefixed = routing.build({"p": _entry("p", ["t"])})
    assert prefixed.tool_route("t") is None and prefixed.prompt_route("t") is None


def test_cursor_round_trip_and_rejection() -> None:
    items = list(range(250))
    first, cursor = page(items, None, "tools")
    second, cursor2 = page(items, cursor, "tools")
    third, cursor3 = page(items, cursor2, "tools")
    assert first + second + third == items and cursor3 is None
    for bad in ("garbage", cursor.replace("A", "B") if cursor else "x"):
        with pytest.raises(MCPError) as err:
            page(items, bad + "==", "tools")
        assert err.value.error.code == jsonrpc.INVALID_PARAMS
    with pytest.raises(MCPError):
        page(items, cursor, "prompts")  # a cursor of another list


@pytest.mark.parametrize(
    ("message", "ok"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, True),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, True),
        ({"jsonrpc": "2.0", "id": "a", "result": {}}, True),
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], False),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, False),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}, False),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}, False),
        ({"id": 1, "method": "ping"}, False),
        ("text", False),
    ],
)
def test_jsonrpc_shape(message: object, ok: bool) -> None:
    assert (shape_error(message) is None) == ok


def test_subjects_refuse_tokens_that_would_add_levels() -> None:
    from fedmcp.shared.config import BackingServer

    with pytest.raises(ValueError):
        BackingServer(command="x").check("a.b")
    with pytest.raises(ValueError):
        Subjects("bad prefix")
    assert Subjects("acme.prod").rpc("time") == "acme.prod.rpc.time"
    assert Subjects("acme.prod").bucket("catalogs", "east") == "acme_prod_catalogs_east"


def test_example_config_and_mcp_json(tmp_path: Path) -> None:
    config = load_toml(ROOT / "fedmcp.toml")
    assert set(config.servers) == {"time", "demo"}
    mcp_json = tmp_path / "claude.json"
    mcp_json.write_text(
        json.dumps({"mcpServers": {"files": {"command": "npx", "args": ["-y", "x"]}, "web": {"url": "http://h/mcp"}}})
    )
    merged = load_mcp_json(mcp_json, config)
    assert set(merged.servers) == {"time", "demo", "files", "web"}
    assert merged.servers["web"].url == "http://h/mcp"
    bad = tmp_path / "bad.toml"
    bad.write_text('[servers.x]\ncommand = "a"\nurl = "http://b"\n')
    with pytest.raises(ValueError, match="exactly one"):
        load_toml(bad)


@pytest.mark.parametrize(
    "conf",
    sorted((ROOT / "deploy" / "nats").rglob("*.conf")),
    ids=lambda p: str(p.relative_to(ROOT / "deploy" / "nats")),
)
def test_nats_configs_are_valid(conf: Path, tmp_path: Path) -> None:
    cwd = None
    if "tls" in conf.relative_to(ROOT / "deploy" / "nats").parts:
        # nats-server loads the certificates the file names (./certs/...), from its working directory
        from fedmcp.cli.certs import DEFAULT_CLIENTS, write_dev_certs

        write_dev_certs(tmp_path / "certs", ["localhost", "127.0.0.1"], DEFAULT_CLIENTS.split(","))
        cwd = tmp_path
    result = subprocess.run([binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.anyio
async def test_event_store_replays_one_stream_after_an_id() -> None:
    import mcp_types as types
    from fedmcp.edge.event_store import MemoryEventStore

    store = MemoryEventStore(max_events=5, max_per_stream=3)

    def note(n: int) -> types.JSONRPCNotification:
        return types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n})

    prime = await store.store_event("s1", None)
    ids = [await store.store_event("s1", note(n)) for n in range(3)]
    await store.store_event("s2", note(99))
    replayed: list[object] = []

    async def send(event: object) -> None:
        replayed.append(event)

    assert await store.replay_events_after(ids[0], send) == "s1"
    assert [e.message.params for e in replayed] == [{"n": 1}, {"n": 2}]  # type: ignore[attr-defined]
    assert await store.replay_events_after(prime, send) is None  # evicted: at most 3 per stream
    assert await store.replay_events_after("no-such-id", send) is None


def test_edge_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    """Regression: a proto-0 socket made every 2026-07-28 response wait ~40 ms on delayed ACKs."""
    import socket

    from fedmcp.shared.ops_http import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_grafana_dashboard_only_uses_metrics_that_exist() -> None:
    import fedmcp.shared.metrics  # noqa: F401 - registers every metric
    import prometheus_client

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fedmcp-dashboard.json").read_text())
    known = {m.name for m in prometheus_client.REGISTRY.collect()}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b((?:mcp|fedmcp)_[a-z_]+)", e)}
    suffixes = ("_bucket", "_count", "_sum", "_total")
    bases = {next((u.removesuffix(s) for s in suffixes if u.endswith(s)), u) for u in used}
    assert bases <= known, bases - known
