"""TLS on every hop, for real: certificates from `fedmcp certs dev`, two nats-server clusters
from deploy/nats/tls joined by a mutual-TLS gateway with mutual TLS for clients, every service
its own process with the FEDMCP_NATS_TLS_* variables, the edge on HTTPS (client certificates
required) and the backing server on HTTPS. And the refusals: plaintext NATS, NATS without a client
certificate, a gateway peer without one, HTTPS without a client certificate or with an untrusted CA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fedmcp.shared import bus, tls
from fedmcp.shared.natsserver import NatsServer, binary, free_port
from fedmcp.shared.ops_http import bind, serve_asgi
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from procs import Proc, fedmcp

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
TLS_CONFS = ROOT / "deploy" / "nats" / "tls"
CRED = "fedmcp:fedmcp-secret@"  # deploy/nats/accounts.conf's development user
ROLES = ("edge", "manager", "adapter", "ops")
TLS_ENV = (tls.NATS_CA_ENV, tls.NATS_CERT_ENV, tls.NATS_KEY_ENV, tls.NATS_HANDSHAKE_FIRST_ENV, tls.NATS_HOSTNAME_ENV)
NATS_FAILURES = (OSError, ssl.SSLError, nats.errors.Error, TimeoutError)
"""How a refused NATS connection surfaces in nats-py (reset, TLS alert, no servers, timeout)."""


def certs_dev(out: Path) -> Path:
    """Run the real `fedmcp certs dev`."""
    args = fedmcp("certs", "dev", "--out", str(out), "--hosts", "localhost,127.0.0.1")
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return out


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's own NATS connections start without TLS settings; tests set what they need."""
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return certs_dev(tmp_path_factory.mktemp("pki") / "certs")


def role_env(certs: Path, role: str) -> dict[str, str]:
    return {
        tls.NATS_CA_ENV: str(certs / "ca.pem"),
        tls.NATS_CERT_ENV: str(certs / f"{role}.pem"),
        tls.NATS_KEY_ENV: str(certs / f"{role}-key.pem"),
    }


def region_conf(name: str, certs: Path, ports: dict[int, int], dest: Path) -> Path:
    """deploy/nats/tls/<name>.conf with every port moved to a free one and the certificates
    taken from `certs`; nothing else changes (accounts.conf is copied beside, as it sits in deploy/)."""
    text = (TLS_CONFS / f"{name}.conf").read_text()
    assert text.count("verify: true") == 3, "client, route and gateway TLS all verify their peer"
    for port in map(int, re.findall(r"127\.0\.0\.1:(\d+)", text)):
        ports.setdefault(port, free_port())
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    text = text.replace('"./certs/', f'"{certs}/')
    assert "./certs" not in text
    (dest / "tls").mkdir(parents=True, exist_ok=True)
    shutil.copy(TLS_CONFS.parent / "accounts.conf", dest / "accounts.conf")
    path = dest / "tls" / f"{name}.conf"
    path.write_text(text)
    return path


def listen_port(conf: Path, block: str | None = None) -> int:
    text = conf.read_text()
    if block is not None:
        text = text[text.index(f"{block} {{") :]
    return int(re.search(r"listen: 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]


def monitor_port(conf: Path) -> int:
    return int(re.search(r"^http: 127\.0\.0\.1:(\d+)", conf.read_text(), re.M).group(1))  # type: ignore[union-attr]


def first_bytes(port: int, ctx: ssl.SSLContext, *, handshake_first: bool = False) -> bytes:
    """Open a NATS-style TLS connection (plaintext INFO first unless `handshake_first`) and
    return what the server says over TLS; raises when the server refuses the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if not handshake_first:
            assert raw.recv(4096).startswith(b"INFO")
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(4096)


def https_client(certs: Path, *, client_cert: str | None = "ops", ca: Path | None = None) -> httpx2.AsyncClient:
    cert = None if client_cert is None else certs / f"{client_cert}.pem"
    key = None if client_cert is None else certs / f"{client_cert}-key.pem"
    ctx = tls.client_context(ca or certs / "ca.pem", cert_file=cert, key_file=key)
    return httpx2.AsyncClient(verify=ctx, timeout=httpx2.Timeout(30, read=300))


def load_probe_server() -> object:
    spec = importlib.util.spec_from_file_location("probe_server_tls", ROOT / "tests" / "servers" / "probe_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mcp


@asynccontextmanager
async def https_backing_server(certs: Path) -> AsyncIterator[str]:
    """tests/servers/probe_server.py over HTTPS (uvicorn with the server certificate), in this process."""
    sock, stop = bind("127.0.0.1", 0), anyio.Event()
    app = load_probe_server().streamable_http_app()  # type: ignore[attr-defined]
    ctx = tls.server_context(certs / "server.pem", certs / "server-key.pem")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_asgi(app, sock, stop=stop, ssl=ctx))
        try:
            yield f"https://127.0.0.1:{sock.getsockname()[1]}/mcp"
        finally:
            stop.set()


async def until_healthy(monitor: int, timeout: float = 60) -> None:
    """Until nats-server's /healthz is 200: JetStream has a meta leader (the gateway is up)."""
    async with httpx2.AsyncClient(timeout=2) as http:
        with anyio.fail_after(timeout):
            while True:
                if (await http.get(f"http://127.0.0.1:{monitor}/healthz")).status_code == 200:
                    return
                await anyio.sleep(0.2)  # polling another process's state, bounded by fail_after


async def tls_clients(conf: Path) -> set[str]:
    """The client certificate subjects of a nats-server's client connections (all of them TLS)."""
    async with httpx2.AsyncClient(timeout=5) as http:
        connz = (await http.get(f"http://127.0.0.1:{monitor_port(conf)}/connz?auth=true")).json()
    subjects = set()
    for conn in connz["connections"]:
        assert conn.get("tls_version"), conn
        subjects |= {cert["subject"] for cert in conn.get("tls_peer_certs", [])}
    return subjects


async def until_tools(url: str, certs: Path, expected: set[str], timeout: float = 60) -> None:
    """Until the HTTPS edge lists `expected` (its process, the adapter's and the manager's start apart)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                async with https_client(certs) as http, Client(streamable_http_client(url, http_client=http)) as c:
                    if expected <= {t.name for t in (await c.list_tools()).tools}:
                        return
            except Exception:  # not listening or not ready yet
                pass
            await anyio.sleep(0.2)


@dataclass
class Regions:
    east: NatsServer
    west: NatsServer
    east_conf: Path
    west_conf: Path

    def url(self, server: NatsServer) -> str:
        return f"nats://{CRED}127.0.0.1:{server.port}"


@pytest.fixture
def regions(certs: Path, tmp_path: Path) -> Iterator[Regions]:
    ports: dict[int, int] = {}
    confs = {name: region_conf(name, certs, ports, tmp_path / "nats") for name in ("east", "west")}
    servers = {
        name: NatsServer(tmp_path / f"nats-{name}", port=listen_port(conf), config_file=conf)
        for name, conf in confs.items()
    }
    try:
        for server in servers.values():
            server.start()
        yield Regions(servers["east"], servers["west"], confs["east"], confs["west"])
    finally:
        for server in servers.values():
            server.stop()


def test_certs_dev_writes_a_ca_server_and_client_certificates(certs: Path) -> None:
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    assert server.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ekus = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(ekus) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    for role in ROLES:
        client = x509.load_pem_x509_certificate((certs / f"{role}.pem").read_bytes())
        assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role
        assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]
    for key in ["ca-key.pem", "server-key.pem", *(f"{role}-key.pem" for role in ROLES)]:
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600, key


async def test_tls_everywhere_call_crosses_a_mutual_tls_gateway(certs: Path, regions: Regions, tmp_path: Path) -> None:
    await until_healthy(monitor_port(regions.east_conf))
    await until_healthy(monitor_port(regions.west_conf))
    east, west = regions.url(regions.east), regions.url(regions.west)
    js = ["--region", "east", "--js-cluster", "east", "--js-replicas", "1"]
    edge_port = free_port()
    edge_url = f"https://127.0.0.1:{edge_port}/mcp"
    server = certs / "server.pem"
    other_ca = certs_dev(tmp_path / "other") / "ca.pem"  # a CA nobody here trusts
    procs: list[Proc] = []
    async with https_backing_server(certs) as backing:
        try:
            env = {**os.environ, **role_env(certs, "manager")}
            procs.append(Proc(fedmcp("manager", "--nats-url", east, *js), tmp_path / "manager.log", env=env))
            edge = fedmcp(
                *("edge", "--nats-url", east, *js, "--anonymous", "--port", str(edge_port)),
                *("--tls-cert", str(server), "--tls-key", str(certs / "server-key.pem")),
                *("--tls-client-ca", str(certs / "ca.pem")),
            )
            procs.append(Proc(edge, tmp_path / "edge.log", env={**os.environ, **role_env(certs, "edge")}))
            # The adapter trusts the development CA for the backing server's HTTPS (httpx2 reads SSL_CERT_FILE).
            env = {**os.environ, **role_env(certs, "adapter"), "SSL_CERT_FILE": str(certs / "ca.pem")}
            adapter = fedmcp(
                *("adapter", "--nats-url", west, "--region", "west", "--name", "probe"),
                *("--server-json", json.dumps({"url": backing}), "--heartbeat", "0.5"),
            )
            procs.append(Proc(adapter, tmp_path / "adapter.log", env=env))

            await until_tools(edge_url, certs, {"probe_pid"})
            async with https_client(certs) as http, Client(streamable_http_client(edge_url, http_client=http)) as c:
                result = await c.call_tool("probe_pid", {})
            assert not result.is_error, result
            # The backing server runs in this process: the call went edge (east) -> gateway -> adapter (west) -> here.
            assert result.structured_content == {"result": os.getpid()}
            assert "https://127.0.0.1:" in (tmp_path / "edge.log").read_text()
            # Every service's NATS connection is TLS, with its own role's certificate.
            assert await tls_clients(regions.east_conf) >= {
                "CN=manager,O=fedmcp development",
                "CN=edge,O=fedmcp development",
            }
            assert await tls_clients(regions.west_conf) >= {"CN=adapter,O=fedmcp development"}

            # HTTPS refusals at the edge: no client certificate, an untrusted CA, plain HTTP.
            with pytest.raises(httpx2.TransportError):
                async with https_client(certs, client_cert=None) as http:
                    await http.get(edge_url.replace("/mcp", "/healthz"))
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                async with https_client(certs, ca=other_ca) as http:
                    await http.get(edge_url.replace("/mcp", "/healthz"))
            with pytest.raises(httpx2.TransportError):
                async with httpx2.AsyncClient(timeout=5) as http:
                    await http.get(f"http://127.0.0.1:{edge_port}/healthz")
            async with https_client(certs) as http:
                assert (await http.get(edge_url.replace("/mcp", "/healthz"))).status_code == 200
        finally:  # services first, while the backing server (this event loop) still answers
            for proc in reversed(procs):
                await anyio.to_thread.run_sync(proc.stop)


async def test_tls_servers_refuse_plaintext_and_clients_without_a_certificate(certs: Path, regions: Regions) -> None:
    port = regions.east.port
    # A plain-TCP client: the server announces TLS and gives no PONG to a plaintext CONNECT.
    async with await anyio.connect_tcp("127.0.0.1", port) as raw:
        info = json.loads((await raw.receive()).split(b" ", 1)[1])
        assert info["tls_required"] is True
        await raw.send(b'CONNECT {"user":"fedmcp","pass":"fedmcp-secret","verbose":false}\r\nPING\r\n')
        seen = b""
        with anyio.fail_after(10):
            try:
                while chunk := await raw.receive():
                    seen += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        assert b"PONG" not in seen
    # nats-py without TLS settings upgrades, but with the system's CAs, which do not know ours.
    with pytest.raises(NATS_FAILURES):
        await nats.connect(regions.url(regions.east), allow_reconnect=False, connect_timeout=3)
    # TLS with the right CA but no client certificate: `verify: true` refuses it.
    no_cert = tls.client_context(certs / "ca.pem")
    with pytest.raises(NATS_FAILURES):
        await nats.connect(regions.url(regions.east), tls=no_cert, allow_reconnect=False, connect_timeout=3)
    with pytest.raises((ssl.SSLError, OSError)):
        first_bytes(port, no_cert)
    # With the edge's client certificate it works (the same check, to see the refusals were about the certificate).
    with_cert = tls.client_context(certs / "ca.pem", cert_file=certs / "edge.pem", key_file=certs / "edge-key.pem")
    nc = await nats.connect(regions.url(regions.east), tls=with_cert, allow_reconnect=False, connect_timeout=3)
    await nc.close()

    # The gateway is mutual TLS: it speaks TLS first and wants a certificate from its peer.
    gateway = listen_port(regions.west_conf, "gateway")
    with pytest.raises((ssl.SSLError, OSError)):
        first_bytes(gateway, no_cert, handshake_first=True)
    peer = tls.client_context(certs / "ca.pem", cert_file=certs / "server.pem", key_file=certs / "server-key.pem")
    assert first_bytes(gateway, peer, handshake_first=True).startswith(b"INFO")


async def test_bus_connect_takes_tls_from_the_environment(
    certs: Path, regions: Regions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in role_env(certs, "ops").items():
        monkeypatch.setenv(name, value)
    for url in (regions.url(regions.east), regions.url(regions.west).replace("nats://", "tls://")):
        nc = await bus.connect(url, name="test-tls")
        try:
            assert nc.is_connected
            await nc.flush()
        finally:
            await nc.close()
    # TLS configured, plaintext server: refused before any CONNECT (and its password) is sent,
    # although nats-py itself would go on in plaintext when the server does not ask for TLS.
    with NatsServer(tmp_path / "plain") as plain:
        with pytest.raises(NATS_FAILURES):
            await bus.connect(plain.url, name="test-tls", allow_reconnect=False, connect_timeout=3)
        monkeypatch.delenv(tls.NATS_CA_ENV)
        monkeypatch.delenv(tls.NATS_CERT_ENV)
        monkeypatch.delenv(tls.NATS_KEY_ENV)
        nc = await bus.connect(plain.url, name="test-plain")  # no TLS settings: as before
        await nc.close()


async def test_handshake_first(certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    conf = tmp_path / "hsfirst.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'tls {{ cert_file: "{certs}/server.pem", key_file: "{certs}/server-key.pem", handshake_first: true }}\n'
    )
    server = Proc([binary(), "-c", str(conf)], tmp_path / "hsfirst.log")
    try:
        ctx = tls.client_context(certs / "ca.pem")
        with anyio.fail_after(10):
            while True:  # the port speaks TLS at once, so NatsServer's plaintext INFO probe cannot tell
                try:
                    assert first_bytes(port, ctx, handshake_first=True).startswith(b"INFO")
                    break
                except OSError:
                    await anyio.sleep(0.05)  # polling a child's port, bounded by fail_after
        monkeypatch.setenv(tls.NATS_CA_ENV, str(certs / "ca.pem"))
        url = f"tls://127.0.0.1:{port}"
        with pytest.raises(NATS_FAILURES):  # the server sends nothing in plaintext: no INFO to read
            await bus.connect(url, name="test-hs", allow_reconnect=False, connect_timeout=2)
        monkeypatch.setenv(tls.NATS_HANDSHAKE_FIRST_ENV, "1")
        nc = await bus.connect(url, name="test-hs")
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()


async def test_fedmcp_up_serves_https_from_its_config(certs: Path, procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "fedmcp.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[edge]\nanonymous = true\nport = {port}\ntls_cert = "{certs / "server.pem"}"\ntls_key = "{certs / "server-key.pem"}"\n'
        f'[servers.demo]\ncommand = "{sys.executable}"\nargs = ["-m", "fedmcp.demo_server.server"]\n'
    )
    procs.append(Proc(fedmcp("up", "--config", str(tmp_path / "fedmcp.toml")), tmp_path / "up.log", cwd=tmp_path))
    url = f"https://127.0.0.1:{port}/mcp"
    await until_tools(url, certs, {"demo_add"}, timeout=30)
    async with (
        https_client(certs, client_cert=None) as http,
        Client(streamable_http_client(url, http_client=http)) as c,
    ):
        result = await c.call_tool("demo_add", {"a": 2, "b": 3})
    assert result.structured_content == {"result": 5}
    assert f"fedmcp is up: MCP endpoint {url}" in (tmp_path / "up.log").read_text()


def test_tls_settings_are_checked(certs: Path) -> None:
    assert tls.nats_tls_from_env("nats://h:4222", {}) is None
    assert tls.nats_tls_from_env("nats://a:4222,tls://b:4222", {}) is not None  # system CAs
    with pytest.raises(ValueError, match=tls.NATS_CERT_ENV):
        tls.nats_tls_from_env("nats://h:4222", {tls.NATS_KEY_ENV: str(certs / "ops-key.pem")})
    with pytest.raises(FileNotFoundError):
        tls.nats_tls_from_env("nats://h:4222", {tls.NATS_CA_ENV: str(certs / "missing.pem")})
    with pytest.raises(ValueError):
        tls.nats_tls_from_env(
            "nats://h:4222", {tls.NATS_CA_ENV: str(certs / "ca.pem"), "FEDMCP_NATS_TLS_HANDSHAKE_FIRST": "maybe"}
        )
    hinted = tls.nats_tls_from_env(
        "nats://10.0.0.1:4222", {tls.NATS_CA_ENV: str(certs / "ca.pem"), tls.NATS_HOSTNAME_ENV: "localhost"}
    )
    assert hinted is not None and hinted.options()["tls_hostname"] == "localhost"
    assert tls.optional_server_context(None, None) is None
    with pytest.raises(ValueError):
        tls.optional_server_context(None, certs / "server-key.pem")
    assert (
        tls.server_context(certs / "server.pem", certs / "server-key.pem", client_ca_file=certs / "ca.pem").verify_mode
        == ssl.CERT_REQUIRED
    )
