"""`fedmcp keys`: credentials the edge checks and signs with.

fedmcp keys api        a new API key (`fmk_…`) for a service caller: printed once, only its
                       SHA-256 is kept, appended to the edge's api_keys_file (JSON, 0600)
fedmcp keys identity   an Ed25519 key pair: the edge signs callers' identities with the
                       private key (FEDMCP_IDENTITY_KEY / --identity-key), adapters verify
                       with the public one (FEDMCP_TRUSTED_EDGE_KEYS)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import click
from fedmcp.edge.auth import API_KEY_PREFIX, hash_api_key
from fedmcp.shared.identity import write_key_pair


def new_api_key() -> str:
    """`fmk_` and 43 URL-safe characters (256 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def _read_keys(path: Path) -> dict[str, Any]:
    if not path.exists() or not path.read_text().strip():
        return {"keys": []}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys", []), list):
        raise click.ClickException(f'{path}: expected {{"keys": [...]}}')
    doc.setdefault("keys", [])
    return doc


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_api_key(
    path: Path, principal: str, *, tenant: str = "", scopes: list[str] | None = None, groups: list[str] | None = None
) -> str:
    """A new key, its hash entry appended to `path` (created if missing); returns the key."""
    doc = _read_keys(path)
    key = new_api_key()
    doc["keys"].append(
        {
            "sha256": hash_api_key(key),
            "principal": principal,
            "tenant": tenant,
            "scopes": list(scopes or []),
            "groups": list(groups or []),
        }
    )
    _write_private(path, json.dumps(doc, indent=2) + "\n")
    return key


@click.group()
def keys() -> None:
    """API keys and the edge's identity-signing key."""


@keys.command("api")
@click.option("--principal", required=True, help="The identity the key authenticates as.")
@click.option("--tenant", default="", help="The principal's tenant.")
@click.option("--scope", "scopes", multiple=True, help="A scope the key carries (repeatable).")
@click.option("--group", "groups", multiple=True, help="A group the principal is in (repeatable).")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("api-keys.json"),
    show_default=True,
    help="The edge's api_keys_file: the key's SHA-256 is appended (created, mode 0600).",
)
def api(principal: str, tenant: str, scopes: tuple[str, ...], groups: tuple[str, ...], path: Path) -> None:
    """Create an API key for PRINCIPAL; print it once (only its hash is stored)."""
    if not principal.strip():
        raise click.BadParameter("must not be empty", param_hint="--principal")
    key = add_api_key(path, principal, tenant=tenant, scopes=list(scopes), groups=list(groups))
    click.echo(key)
    click.echo(f"stored its SHA-256 for {principal} in {path}; the key is not stored anywhere, keep it now", err=True)


@keys.command("identity")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write <name>.pem (private, 0600) and <name>.pub.pem to.",
)
@click.option("--name", default="edge-identity", show_default=True, help="File name stem.")
def identity(out: Path, name: str) -> None:
    """Create the Ed25519 key pair an edge signs callers' identities with."""
    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter(f"{name!r} cannot name a key file", param_hint="--name")
    private, public = out / f"{name}.pem", out / f"{name}.pub.pem"
    if private.exists() or public.exists():
        raise click.ClickException(f"{private} or {public} already exists; not overwriting a key")
    private, public = write_key_pair(out, name)
    click.echo(f"private key (edge: --identity-key / FEDMCP_IDENTITY_KEY): {private}")
    click.echo(f"public key (adapters: FEDMCP_TRUSTED_EDGE_KEYS): {public}")
