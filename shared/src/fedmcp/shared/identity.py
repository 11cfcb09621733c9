"""Who is calling, on the bus: an edge-signed, short-lived assertion of the caller.

The edge authenticates the client and signs (Ed25519, a compact JWS/JWT) the
principal, tenant, scopes and groups, with `aud` = the target server and an
expiry of seconds. Adapters verify signature, audience and expiry against the
edges' public keys and refuse anything else, so a bus client without an edge's
private key cannot act as a user, and an assertion for one server is worthless
at another. Front tokens never leave the edge.

Both sides cache: an edge signs once per (principal, server) per third of the
lifetime, an adapter verifies a given assertion once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fedmcp.shared.policy import Principal

AUDIENCE_PREFIX = "fedmcp:server:"
DEFAULT_TTL = 60.0


class IdentityError(Exception):
    """An assertion that must be refused; the message says why (never echoes the token)."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_keys(paths: str) -> dict[str, Ed25519PublicKey]:
    """Comma-separated PEM files, each holding an edge's Ed25519 public (or private) key."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in filter(None, (p.strip() for p in paths.split(","))):
        data = Path(item).read_bytes()
        loaded: object
        try:
            loaded = serialization.load_pem_public_key(data)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError(f"{item}: not an Ed25519 key")
        keys[key_id(loaded)] = loaded
    return keys


def write_key_pair(directory: Path, name: str = "edge-identity") -> tuple[Path, Path]:
    """A new Ed25519 key pair as `<name>.pem` (private, 0600) and `<name>.pub.pem`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@dataclass
class Signer:
    key: Ed25519PrivateKey
    issuer: str
    ttl: float = DEFAULT_TTL
    _kid: str = ""
    _cache: dict[tuple[Principal, str], tuple[float, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._kid = key_id(self.key.public_key())

    def assertion(self, principal: Principal, server: str) -> str:
        now = time.time()
        cached = self._cache.get((principal, server))
        if cached is not None and cached[0] > now:
            return cached[1]
        claims = {
            "iss": self.issuer,
            "sub": principal.id,
            "aud": AUDIENCE_PREFIX + server,
            "iat": int(now),
            "exp": int(now + self.ttl),
            "jti": uuid.uuid4().hex,
            "tenant": principal.tenant,
            "scope": " ".join(principal.scopes),
            "groups": list(principal.groups),
        }
        token = jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self._kid})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(principal, server)] = (now + self.ttl / 3, token)
        return token


@dataclass
class Verifier:
    keys: dict[str, Ed25519PublicKey]
    leeway: float = 5.0
    _cache: dict[str, tuple[float, str, Principal]] = field(default_factory=dict)

    def verify(self, token: str | None, server: str) -> Principal:
        if not token:
            raise IdentityError("the request carries no identity assertion")
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            expires, audience, principal = cached
            if expires + self.leeway < now:
                raise IdentityError("the identity assertion has expired")
            if audience != AUDIENCE_PREFIX + server:
                raise IdentityError("the identity assertion was issued for another server")
            return principal
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError:
            raise IdentityError("the identity assertion is malformed") from None
        key = self.keys.get(kid)
        if key is None:
            raise IdentityError("the identity assertion is signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=AUDIENCE_PREFIX + server,
                leeway=self.leeway,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise IdentityError("the identity assertion has expired") from None
        except jwt.InvalidAudienceError:
            raise IdentityError("the identity assertion was issued for another server") from None
        except jwt.InvalidSignatureError:
            raise IdentityError("the identity assertion has a bad signature") from None
        except jwt.PyJWTError as exc:
            raise IdentityError(f"the identity assertion is invalid ({type(exc).__name__})") from None
        principal = Principal(
            id=str(claims["sub"]),
            tenant=str(claims.get("tenant", "")),
            scopes=tuple(str(claims.get("scope", "")).split()),
            groups=tuple(str(g) for g in claims.get("groups", [])),
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (float(claims["exp"]), AUDIENCE_PREFIX + server, principal)
        return principal
