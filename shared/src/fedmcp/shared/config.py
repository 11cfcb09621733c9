"""fedmcp configuration: `fedmcp.toml`, or the `mcpServers` JSON that desktop clients use."""

from __future__ import annotations

from pathlib import Path

import msgspec
from fedmcp.shared import chunks
from fedmcp.shared.subjects import DEFAULT_PREFIX, check_token

AFFINITIES = frozenset({"none", "session"})


class BackingServer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How an adapter reaches one backing MCP server: a stdio command or an HTTP URL."""

    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Added to the SDK's small default environment (PATH, HOME, ...)."""
    inherit_env: bool = False
    """Pass the adapter's whole environment to the child (secrets included)."""
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    prefix: str | None = None
    """Tool and prompt name prefix; default the server name, "" for none."""
    era_companion: bool | None = None
    """Open a second, handshake-era session for handshake-era clients of a 2026-07-28 session.
    Default: on for HTTP servers (one server, two sessions), off for stdio servers, where it
    would mean a second process with its own state."""
    era: str = "auto"
    """How the adapter negotiates: "auto" (server/discover, else initialize), "legacy"
    (initialize only) or a 2026-07-28+ version to pin."""
    replicas: int = 1
    """Adapter processes `fedmcp up` starts for this server."""
    pool: int = 1
    """Backing sessions each adapter keeps (stdio: one process each, each with its own state);
    calls go to the least busy one."""
    max_concurrency: int = 64
    """Calls one adapter runs at once; beyond it the adapter answers busy and the edge tries elsewhere."""
    affinity: str = "none"
    """"session": a stateful server; every handshake-era front session gets a backing session of its
    own (stdio: its own process; HTTP: its own MCP session), pinned to one adapter instance, and loses
    the front session with it. "none": the adapter's shared sessions serve every client."""
    max_sessions: int = 256
    """With affinity "session": pinned sessions one adapter holds at most; beyond it it answers busy."""
    session_idle_timeout: float = 7200.0
    """With affinity "session": seconds after which a pinned session without calls is closed (its front
    session then expires at its next call). Default: as long as an idle front session record lives."""

    def check(self, name: str) -> None:
        check_token(name, "server name")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"server {name!r}: give exactly one of 'command' or 'url'")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"server {name!r}: affinity must be one of {', '.join(sorted(AFFINITIES))}")
        if self.max_sessions < 1 or not self.session_idle_timeout > 0:
            raise ValueError(f"server {name!r}: max_sessions and session_idle_timeout must be positive")


class EdgeAuth(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The edge as an OAuth 2.1 resource server (edge/auth.py); `[edge.auth]` in fedmcp.toml."""

    resource: str
    """This resource's canonical URI, the audience its tokens must carry (https://mcp.example.com/mcp)."""
    authorization_servers: list[str] = msgspec.field(default_factory=list)
    issuer: str | None = None
    """The issuer tokens must name (default: none checked)."""
    jwks_file: str | None = None
    jwks_url: str | None = None
    required_scopes: list[str] = msgspec.field(default_factory=list)
    api_keys_file: str | None = None
    """JSON `{"keys": [{"sha256": …, "principal": …, "scopes": [...]}]}`: only hashes are stored."""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "EdDSA", "PS256"])


class EdgeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8765
    path: str = "/mcp"
    max_body_bytes: int = chunks.DEFAULT_LIMIT
    """Largest HTTP request body; also fedmcp's payload limit (shared/chunks.py)."""
    request_timeout: float = 60.0
    sse_poll_after: float | None = None
    """SEP-1699 polling for handshake-era HTTP clients: close a call's POST stream after this many
    seconds (with a retry hint); the client resumes it with Last-Event-ID. None: never."""
    anonymous: bool = False
    """Serve callers without credentials (as principal "anonymous"): only when no `auth` is set, and
    only on a loopback address."""
    auth: EdgeAuth | None = None
    tls_cert: str | None = None
    """PEM certificate (chain) for HTTPS; with it the edge serves only HTTPS. Paths are relative
    to the working directory."""
    tls_key: str | None = None
    """Its private key (PEM), unless the key is in `tls_cert`."""
    tls_client_ca: str | None = None
    """Require client certificates signed by this CA (mutual TLS)."""
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    """Host headers the MCP endpoint takes (exact, `name:*` for any port, `*` for any). Empty: loopback
    names when bound to loopback, else any (DNS-rebinding protection, edge/guard.py)."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """Origin headers (browsers) the MCP endpoint takes, same forms. Empty: loopback origins when bound
    to loopback, else none. Requests without an Origin header always pass."""


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats_url: str | None = None
    """None: `fedmcp up` starts an embedded nats-server."""
    prefix: str = DEFAULT_PREFIX
    region: str = "local"
    data_dir: str = ".fedmcp"
    edge: EdgeSettings = msgspec.field(default_factory=EdgeSettings)
    servers: dict[str, BackingServer] = msgspec.field(default_factory=dict)

    def check(self) -> Config:
        for name, server in self.servers.items():
            server.check(name)
        return self


class _McpJsonServer(msgspec.Struct, kw_only=True):
    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    type: str | None = None


class _McpJson(msgspec.Struct):
    mcpServers: dict[str, _McpJsonServer]


def load_toml(path: Path) -> Config:
    return msgspec.toml.decode(path.read_bytes(), type=Config).check()


def load_mcp_json(path: Path, base: Config | None = None) -> Config:
    """Servers from a desktop client's `mcpServers` file, on top of `base` settings."""
    doc = msgspec.json.decode(path.read_bytes(), type=_McpJson)
    servers = {
        name: BackingServer(command=s.command, args=s.args, env=s.env, cwd=s.cwd, url=s.url, headers=s.headers)
        for name, s in doc.mcpServers.items()
    }
    config = base or Config()
    return msgspec.structs.replace(config, servers={**config.servers, **servers}).check()


def encode_server(server: BackingServer) -> bytes:
    return msgspec.json.encode(server)


def decode_server(data: bytes) -> BackingServer:
    return msgspec.json.decode(data, type=BackingServer)
