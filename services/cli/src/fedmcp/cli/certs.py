"""`fedmcp certs dev`: a development CA and the certificates a TLS federation needs.

Written to `--out` (PEM; keys 0600):

ca.pem, ca-key.pem              the CA (EC P-256); reused when both files are already there
server.pem, server-key.pem      nats-server (clients, routes, gateways) and the edge's HTTPS:
                                SANs from --hosts, EKU serverAuth + clientAuth (a route or a
                                gateway dials its peer with the same certificate)
<role>.pem, <role>-key.pem      one client certificate per role, CN=<role>, EKU clientAuth

For development only: the CA key sits next to the certificates, unencrypted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = "localhost,127.0.0.1,::1"
DEFAULT_CLIENTS = "edge,manager,adapter,ops"
ORGANIZATION = "fedmcp development"
CA_DAYS = 3650
LEAF_DAYS = 825
"""The longest validity some TLS clients (Apple's) accept for a server certificate."""

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, key: Key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def make_ca() -> tuple[x509.Certificate, Key]:
    key = _new_key()
    name = _name("fedmcp development CA")
    cert = (
        _builder(name, name, key, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_leaf(
    ca: x509.Certificate,
    ca_key: Key,
    common_name: str,
    *,
    hosts: list[str] | None = None,
    server: bool = False,
) -> tuple[x509.Certificate, Key]:
    """A certificate signed by the CA: a server one (serverAuth + clientAuth, SANs `hosts`) or a
    client one (clientAuth)."""
    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else []
    usages = usages or [ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )
    builder = (
        _builder(_name(common_name), ca.subject, key, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(aki, critical=False)
    )
    if hosts:
        builder = builder.add_extension(_subject_alt_names(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _write_key(path: Path, key: Key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(data)


def _load_ca(out: Path) -> tuple[x509.Certificate, Key] | None:
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise click.ClickException(f"{key_path}: not an EC key")
    return cert, key


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def write_dev_certs(out: Path, hosts: list[str], clients: list[str], *, new_ca: bool = False) -> list[Path]:
    """Write the CA (unless one is there and `new_ca` is false), the server certificate and the
    client certificates into `out`; returns the files written."""
    if not hosts:
        raise ValueError("at least one host is needed for the server certificate")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    loaded = None if new_ca else _load_ca(out)
    if loaded is None:
        ca, ca_key = make_ca()
        _write_cert(out / "ca.pem", ca)
        _write_key(out / "ca-key.pem", ca_key)
        written += [out / "ca.pem", out / "ca-key.pem"]
    else:
        ca, ca_key = loaded
    leaves = [("server", make_leaf(ca, ca_key, hosts[0], hosts=hosts, server=True))]
    leaves += [(role, make_leaf(ca, ca_key, role)) for role in clients]
    for stem, (cert, key) in leaves:
        _write_cert(out / f"{stem}.pem", cert)
        _write_key(out / f"{stem}-key.pem", key)
        written += [out / f"{stem}.pem", out / f"{stem}-key.pem"]
    return written


@click.group()
def certs() -> None:
    """TLS certificates."""


@certs.command("dev")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".fedmcp/certs"),
    show_default=True,
    help="Directory to write the PEM files to.",
)
@click.option(
    "--hosts",
    default=DEFAULT_HOSTS,
    show_default=True,
    help="Comma-separated DNS names and IP addresses the server certificate is valid for.",
)
@click.option(
    "--clients",
    default=DEFAULT_CLIENTS,
    show_default=True,
    help="Comma-separated client certificates to write (CN=<name>, EKU clientAuth).",
)
@click.option("--new-ca", is_flag=True, help="Make a new CA even if --out already holds one.")
def dev(out: Path, hosts: str, clients: str, new_ca: bool) -> None:
    """Create a development CA, a server certificate and client certificates (never for production)."""
    host_list, client_list = _split(hosts), _split(clients)
    if not host_list:
        raise click.BadParameter("give at least one host", param_hint="--hosts")
    for role in client_list:
        if role in ("ca", "server") or "/" in role or role.startswith("."):
            raise click.BadParameter(f"{role!r} cannot name a client certificate", param_hint="--clients")
    reused = not new_ca and _load_ca(out) is not None
    write_dev_certs(out, host_list, client_list, new_ca=new_ca)
    click.echo(f"{'reused the CA in' if reused else 'new CA'} {out}/ca.pem")
    click.echo(f"server certificate for {', '.join(host_list)}: {out}/server.pem, {out}/server-key.pem")
    for role in client_list:
        click.echo(f"client certificate CN={role}: {out}/{role}.pem, {out}/{role}-key.pem")
