"""TLS contexts from settings: a client context for NATS, a server context for the edge's HTTPS.

Standard library `ssl` only (`fedmcp certs dev` generates development certificates with
`cryptography`). Every NATS connection of every service and of the CLI reads its TLS
settings from the environment, in `fedmcp.shared.bus.connect`:

| variable | meaning |
|---|---|
| `FEDMCP_NATS_TLS_CA` | CA file (PEM) that signed the NATS servers' certificates; turns TLS on |
| `FEDMCP_NATS_TLS_CERT`, `FEDMCP_NATS_TLS_KEY` | client certificate and key, for servers with `verify: true` (mutual TLS) |
| `FEDMCP_NATS_TLS_HANDSHAKE_FIRST` | `1`: TLS before anything else, for servers with `handshake_first: true` |
| `FEDMCP_NATS_TLS_HOSTNAME` | the name to check the server certificate against, when the URL's host is not in it |
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

NATS_CA_ENV = "FEDMCP_NATS_TLS_CA"
NATS_CERT_ENV = "FEDMCP_NATS_TLS_CERT"
NATS_KEY_ENV = "FEDMCP_NATS_TLS_KEY"
NATS_HANDSHAKE_FIRST_ENV = "FEDMCP_NATS_TLS_HANDSHAKE_FIRST"
NATS_HOSTNAME_ENV = "FEDMCP_NATS_TLS_HOSTNAME"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

PathLike = str | os.PathLike[str]


def _readable(path: PathLike, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(p)!r}")
    return str(p)


def client_context(
    ca_file: PathLike | None = None, *, cert_file: PathLike | None = None, key_file: PathLike | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server (against `ca_file`, else the system's CAs) and
    checks its host name; with `cert_file` (and `key_file`, unless the key is in the same PEM)
    it presents a client certificate (mutual TLS)."""
    if key_file is not None and cert_file is None:
        raise ValueError("a TLS client key needs its certificate")
    cafile = None if ca_file is None else _readable(ca_file, "TLS CA")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        keyfile = None if key_file is None else _readable(key_file, "TLS client key")
        ctx.load_cert_chain(_readable(cert_file, "TLS client certificate"), keyfile)
    return ctx


def server_context(
    cert_file: PathLike, key_file: PathLike | None = None, *, client_ca_file: PathLike | None = None
) -> ssl.SSLContext:
    """A server context with this certificate; with `client_ca_file`, clients must present a
    certificate that CA signed (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    keyfile = None if key_file is None else _readable(key_file, "TLS key")
    ctx.load_cert_chain(_readable(cert_file, "TLS certificate"), keyfile)
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=_readable(client_ca_file, "TLS client CA"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def optional_server_context(
    cert_file: PathLike | None, key_file: PathLike | None, client_ca_file: PathLike | None = None
) -> ssl.SSLContext | None:
    """`server_context` when a certificate is given, None (plain HTTP) when nothing is."""
    if cert_file is None:
        if key_file is not None or client_ca_file is not None:
            raise ValueError("TLS key or client CA given without a TLS certificate")
        return None
    return server_context(cert_file, key_file, client_ca_file=client_ca_file)


@dataclass(frozen=True)
class NatsTls:
    """What `bus.connect` passes to nats-py for TLS."""

    context: ssl.SSLContext
    hostname: str | None = None
    handshake_first: bool = False

    def options(self) -> dict[str, object]:
        opts: dict[str, object] = {"tls": self.context, "tls_handshake_first": self.handshake_first}
        if self.hostname:
            opts["tls_hostname"] = self.hostname
        return opts


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected 1 or 0")


def uses_tls_scheme(url: str) -> bool:
    """Whether any server of a comma-separated NATS URL list says `tls://`."""
    return any(urlsplit(u.strip()).scheme == "tls" for u in url.split(",") if u.strip())


def nats_tls_from_env(url: str = "", environ: Mapping[str, str] | None = None) -> NatsTls | None:
    """The NATS client TLS settings the environment asks for; None: plain TCP (nats-py still
    upgrades when a server demands TLS, against the system's CAs). A `tls://` URL alone turns
    TLS on with the system's CAs."""
    env = os.environ if environ is None else environ
    ca = env.get(NATS_CA_ENV) or None
    cert = env.get(NATS_CERT_ENV) or None
    key = env.get(NATS_KEY_ENV) or None
    handshake_first = _flag(env, NATS_HANDSHAKE_FIRST_ENV)
    hostname = env.get(NATS_HOSTNAME_ENV) or None
    if key is not None and cert is None:
        raise ValueError(f"{NATS_KEY_ENV} is set without {NATS_CERT_ENV}")
    if ca is None and cert is None and not handshake_first and not uses_tls_scheme(url):
        if hostname is not None:
            raise ValueError(f"{NATS_HOSTNAME_ENV} is set but TLS is not ({NATS_CA_ENV} or a tls:// URL)")
        return None
    return NatsTls(client_context(ca, cert_file=cert, key_file=key), hostname, handshake_first)
