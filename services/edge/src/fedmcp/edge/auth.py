"""The edge as an OAuth 2.1 resource server (MCP authorization spec), plus API keys for services.

Every request to an MCP endpoint carries a bearer credential: a JWT from the
configured authorization server (signature against its JWKS, issuer, audience =
this resource, expiry), or an API key (`fmk_…`, stored only as its SHA-256).
Failures get 401 with `WWW-Authenticate: Bearer … resource_metadata=…, scope=…`
so clients can discover the authorization server; a call that needs scopes the
token lacks gets 403 `insufficient_scope` naming them (step-up). Protected
Resource Metadata (RFC 9728) is served at the well-known paths. Anonymous
access exists only when enabled, and only on a loopback listener.

The principal is put in the ASGI scope; the MCP handlers read it from there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import msgspec
import structlog
from fedmcp.edge.guard import replaying
from fedmcp.shared import metrics
from fedmcp.shared.config import EdgeAuth
from fedmcp.shared.policy import Principal
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from fedmcp.edge.governance import Governance

log = structlog.get_logger("fedmcp.edge.auth")

SCOPE_KEY = "fedmcp.principal"
API_KEY_PREFIX = "fmk_"
ANONYMOUS = Principal(id="anonymous")
WELL_KNOWN = "/.well-known/oauth-protected-resource"
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/.well-known/", "/consent/")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    principal: str
    tenant: str = ""
    scopes: list[str] = []
    groups: list[str] = []


class _ApiKeys(msgspec.Struct):
    keys: list[ApiKey]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Denied(Exception):
    status: int
    error: str
    description: str
    scopes: tuple[str, ...] = ()


class Authenticator:
    def __init__(self, settings: EdgeAuth) -> None:
        self.settings = settings
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        if settings.jwks_file:
            self._jwks = jwt.PyJWKSet.from_json(Path(settings.jwks_file).read_text())
        elif settings.jwks_url:
            self._jwks_client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self._api_keys: dict[str, ApiKey] = {}
        if settings.api_keys_file:
            doc = msgspec.json.decode(Path(settings.api_keys_file).read_bytes(), type=_ApiKeys)
            self._api_keys = {k.sha256: k for k in doc.keys}

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Denied(401, "invalid_request", "authentication required")
        credential = authorization[7:].strip()
        if credential.startswith(API_KEY_PREFIX):
            key = self._api_keys.get(hash_api_key(credential))
            if key is None:
                raise Denied(401, "invalid_token", "unknown API key")
            principal = Principal(
                id=key.principal, tenant=key.tenant, scopes=tuple(key.scopes), groups=tuple(key.groups)
            )
        else:
            principal = self._verify_jwt(credential)
        missing = [s for s in self.settings.required_scopes if s not in principal.scopes]
        if missing:
            raise Denied(403, "insufficient_scope", "the token lacks a required scope", tuple(missing))
        return principal

    def _verify_jwt(self, token: str) -> Principal:
        try:
            if self._jwks_client is not None:
                key: Any = self._jwks_client.get_signing_key_from_jwt(token).key
            elif self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key = next((k.key for k in self._jwks.keys if kid is None or k.key_id == kid), None)
                if key is None:
                    raise Denied(401, "invalid_token", "the token is signed by an unknown key")
            else:
                raise Denied(401, "invalid_token", "bearer tokens are not accepted here")
            claims = jwt.decode(
                token,
                key,
                algorithms=self.settings.algorithms,
                audience=self.settings.resource,
                issuer=self.settings.issuer,
                options={"require": ["exp", "sub", "aud"] + (["iss"] if self.settings.issuer else [])},
            )
        except Denied:
            raise
        except jwt.ExpiredSignatureError:
            raise Denied(401, "invalid_token", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Denied(401, "invalid_token", "the token was issued for another resource") from None
        except jwt.InvalidIssuerError:
            raise Denied(401, "invalid_token", "the token comes from an untrusted issuer") from None
        except jwt.InvalidSignatureError:
            raise Denied(401, "invalid_token", "the token's signature is invalid") from None
        except jwt.PyJWKClientError:
            raise Denied(401, "invalid_token", "the token's signing key cannot be found") from None
        except jwt.PyJWTError:
            raise Denied(401, "invalid_token", "the token is malformed") from None
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = tuple(scope.split() if isinstance(scope, str) else (str(s) for s in scope))
        groups = claims.get("groups", [])
        return Principal(
            id=str(claims["sub"]),
            tenant=str(claims.get("tenant", claims.get("tid", ""))),
            scopes=scopes,
            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        )

    # -- Protected Resource Metadata (RFC 9728) -----------------------------------
    def metadata_url(self) -> str:
        base, _, path = self.settings.resource.partition("://")
        host, _, rest = path.partition("/")
        return f"{base}://{host}{WELL_KNOWN}" + (f"/{rest}" if rest else "")

    def metadata(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "resource": self.settings.resource,
            "authorization_servers": self.settings.authorization_servers or [self.settings.issuer or ""],
            "bearer_methods_supported": ["header"],
        }
        if self.settings.required_scopes:
            doc["scopes_supported"] = self.settings.required_scopes
        return doc

    def routes(self, mcp_path: str) -> list[Route]:
        async def metadata(_: Request) -> Response:
            return JSONResponse(self.metadata(), headers={"Cache-Control": "max-age=300"})

        return [Route(WELL_KNOWN, metadata, methods=["GET"]), Route(WELL_KNOWN + mcp_path, metadata, methods=["GET"])]

    def challenge(self, denied: Denied) -> Response:
        scopes = denied.scopes or tuple(self.settings.required_scopes)
        parts = [f'error="{denied.error}"', f'error_description="{denied.description}"']
        parts.append(f'resource_metadata="{self.metadata_url()}"')
        if scopes:
            parts.append(f'scope="{" ".join(scopes)}"')
        body = {"error": denied.error, "error_description": denied.description}
        return Response(
            json.dumps(body),
            status_code=denied.status,
            media_type="application/json",
            headers={"WWW-Authenticate": "Bearer " + ", ".join(parts)},
        )


StepUp = Callable[[Principal, bytes], tuple[str, ...]]
"""Scopes a request body still needs for this principal (tool-level `require_scopes`); () when none."""
OnDenied = Callable[[Denied, Scope], Awaitable[None]]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AuthGate:
    """ASGI middleware: authenticate every MCP request; `authenticator=None` means anonymous (loopback only)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator | None,
        step_up: StepUp | None = None,
        on_denied: OnDenied | None = None,
        open_paths: Iterable[str] = _OPEN_PATHS,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.step_up = step_up
        self.on_denied = on_denied
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.open_paths):
            await self.app(scope, receive, send)
            return
        if self.authenticator is None:
            scope[SCOPE_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(b"authorization")
        try:
            principal = self.authenticator.authenticate(raw.decode("latin-1") if raw else None)
        except Denied as denied:
            if self.on_denied is not None:
                await self.on_denied(denied, scope)
            await self.authenticator.challenge(denied)(scope, receive, send)
            return
        scope[SCOPE_KEY] = principal
        if self.step_up is not None and scope["method"] == "POST":
            replay = await self._check_step_up(principal, scope, receive, send)
            if replay is None:
                return
            receive = replay
        await self.app(scope, receive, send)

    async def _check_step_up(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the body once (the guard in front has bounded its size), check, and replay it."""
        assert self.step_up is not None and self.authenticator is not None
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        missing = self.step_up(principal, body)
        if missing:
            denied = Denied(403, "insufficient_scope", "this call needs more scope", missing)
            if self.on_denied is not None:
                await self.on_denied(denied, scope)
            await self.authenticator.challenge(denied)(scope, receive, send)
            return None
        return replaying(body, receive)


def principal_of(request: object, default: Principal) -> Principal:
    """The authenticated principal of an MCP request (HTTP), or the edge's configured one (stdio)."""
    if isinstance(request, Request):
        found = request.scope.get(SCOPE_KEY)
        if isinstance(found, Principal):
            return found
    return default


async def report_denied(governance: Governance, denied: Denied, scope: Scope) -> None:
    """Count and audit a refusal at the HTTP gate."""
    metrics.AUTH_DENIED.labels("edge", f"{denied.status} {denied.error}").inc()
    client = scope.get("client") or ("", 0)
    await governance.record(
        "denied", ANONYMOUS, outcome=f"{denied.status} {denied.error}", reason=f"{denied.description} ({client[0]})"
    )
