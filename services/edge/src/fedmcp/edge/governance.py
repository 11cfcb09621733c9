"""What the edge decides before a request crosses the bus: visibility, scopes, consent, identity.

Policy hides what a principal may not see (a hidden item answers exactly like a
missing one), tool-level `require_scopes` turns into an HTTP 403 step-up, tools
that need consent ask the user once (elicitation, in whichever form the client
supports) and the grant then holds on every edge in every region until it
expires or is revoked. Every decision is an audit event.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog
from fedmcp.shared import jsonrpc, metrics, telemetry
from fedmcp.shared.audit import Audit, AuditEvent
from fedmcp.shared.grants import GrantStore
from fedmcp.shared.identity import Signer
from fedmcp.shared.policy import Kind, Policy, PolicyStore, Principal
from fedmcp.shared.routing import Route, RoutingTable
from mcp.shared.exceptions import MCPError

log = structlog.get_logger("fedmcp.edge.governance")

CONSENT_REQUIRED = jsonrpc.CONSENT_REQUIRED
CONSENT_DECLINED = jsonrpc.CONSENT_DECLINED
CONSENT_WAIT = 300.0
"""How long a URL-mode consent may take before the call gives up."""

Ask = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Send a server-to-client request (method, params) to the caller and return its result."""


class _Peek(msgspec.Struct):
    method: str = ""
    params: dict[str, Any] = {}


_peek = msgspec.json.Decoder(_Peek)


def consent_form(server: str, tool: str) -> dict[str, Any]:
    return {
        "mode": "form",
        "message": f"Allow the tool {tool!r} of server {server!r} to run on your behalf?",
        "requestedSchema": {
            "type": "object",
            "properties": {"approve": {"type": "boolean", "title": "Allow", "default": True}},
            "required": ["approve"],
        },
    }


def approved(answer: Any) -> bool:
    """An elicitation result that accepts (and, for the form, says approve)."""
    if not isinstance(answer, dict) or answer.get("action") != "accept":
        return False
    content = answer.get("content")
    return not isinstance(content, dict) or content.get("approve", True) is not False


@dataclass
class Governance:
    policy: PolicyStore | None = None
    grants: GrantStore | None = None
    signer: Signer | None = None
    audit: Audit | None = None
    consent_page: Callable[[Principal, str, str], str] | None = None
    """URL of the edge's consent page for (principal, server, tool); None: no page."""
    edge: str = ""
    _hidden_logged: dict[str, float] = field(default_factory=dict)

    @property
    def current(self) -> Policy | None:
        return self.policy.current if self.policy is not None else None

    # -- visibility -------------------------------------------------------------------------
    def visible(self, principal: Principal, kind: Kind, route: Route) -> bool:
        policy = self.current
        return policy is None or policy.allows(principal, kind, route.server, route.name)

    def filter(
        self, principal: Principal, kind: Kind, items: list[Any], routes: dict[str, Route], key: str
    ) -> list[Any]:
        policy = self.current
        if policy is None or (not policy.rules and policy.default == "allow"):
            return items
        return [
            i
            for i in items
            if (r := routes.get(str(i.get(key)))) is None or policy.allows(principal, kind, r.server, r.name)
        ]

    def step_up(self, table: Callable[[], RoutingTable]) -> Callable[[Principal, bytes], tuple[str, ...]]:
        """For the HTTP gate: scopes a tools/call body still needs (403 insufficient_scope)."""

        def missing(principal: Principal, body: bytes) -> tuple[str, ...]:
            policy = self.current
            if policy is None or not body:
                return ()
            try:
                message = _peek.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return ()
            if message.method != "tools/call" or not isinstance(message.params.get("name"), str):
                return ()
            route = table().tool_route(message.params["name"])
            if route is None or not policy.allows(principal, "tool", route.server, route.name):
                return ()  # unknown or hidden: the handler answers "Unknown tool", as for any name
            return tuple(policy.missing_scopes(principal, "tool", route.server, route.name))

        return missing

    # -- calls --------------------------------------------------------------------------------
    async def check_call(self, principal: Principal, route: Route, exposed: str) -> None:
        """Hidden tools get the very error an unknown name gets."""
        if not self.visible(principal, "tool", route):
            await self.record(
                "denied", principal, route, outcome=str(jsonrpc.INVALID_PARAMS), reason="hidden by policy"
            )
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"Unknown tool: {exposed}")
        policy = self.current
        missing = policy.missing_scopes(principal, "tool", route.server, route.name) if policy else []
        if missing:  # reached over stdio or the legacy transport, where there is no HTTP step-up
            await self.record("denied", principal, route, outcome="insufficient_scope", reason=" ".join(missing))
            raise MCPError(code=jsonrpc.INVALID_PARAMS, message=f"this call needs the scopes: {' '.join(missing)}")

    def needs_consent(self, principal: Principal, route: Route, annotations: dict[str, Any]) -> bool:
        policy = self.current
        if policy is None or self.grants is None or not policy.needs_consent(route.server, route.name, annotations):
            return False
        return not self.grants.has(principal.id, route.server, route.name)

    async def obtain_consent(self, principal: Principal, route: Route, caps: dict[str, Any], ask: Ask) -> None:
        """Ask a handshake-era client (it has a back channel), record the grant or end the call."""
        assert self.grants is not None
        elicitation = caps.get("elicitation")
        form = isinstance(elicitation, dict) and (not elicitation or "form" in elicitation)
        url_mode = isinstance(elicitation, dict) and "url" in elicitation
        page = self.consent_page(principal, route.server, route.name) if self.consent_page else None
        await self.record("consent.asked", principal, route, outcome="form" if form else "url" if url_mode else "none")
        if form:
            answer = await ask("elicitation/create", consent_form(route.server, route.name))
            await self.settle(principal, route, approved(answer))
            return
        if url_mode and page is not None:
            elicitation_id = f"consent-{int(time.time() * 1000)}"
            params = {
                "mode": "url",
                "url": page,
                "elicitationId": elicitation_id,
                "message": f"Approve the tool {route.name!r} of server {route.server!r} in your browser.",
            }
            asked_at = time.time()
            answer = await ask("elicitation/create", params)
            if not isinstance(answer, dict) or answer.get("action") != "accept":
                await self.settle(principal, route, False)
            grants = self.grants

            def answered(g: GrantStore) -> bool:
                # A grant, or a refusal recorded by the page (on any edge) after the question.
                return g.has(principal.id, route.server, route.name) or any(
                    x.revoked and x.revoked_at >= asked_at and x.server == route.server and x.tool == route.name
                    for x in g.list(principal.id)
                )

            with anyio.move_on_after(CONSENT_WAIT):
                await grants.wait_until(answered)
            if not grants.has(principal.id, route.server, route.name):
                declined = answered(grants)
                if not declined:
                    await self.record("consent.declined", principal, route, reason="not approved in time")
                why = "was declined" if declined else "was not given in time"
                raise MCPError(code=CONSENT_DECLINED, message=f"consent for {route.name!r} {why}")
            return
        where = f"; approve it at {page}" if page else ""
        raise MCPError(
            code=CONSENT_REQUIRED,
            message=f"the tool {route.name!r} of server {route.server!r} needs your consent{where}",
            data={"consentUrl": page} if page else None,
        )

    async def settle(self, principal: Principal, route: Route, yes: bool, *, page: bool = False) -> None:
        """Record the user's answer: a grant (every edge honours it), or the end of the call."""
        assert self.grants is not None
        if not yes:
            metrics.CONSENT_DECISIONS.labels(route.server, "declined").inc()
            await self.record("consent.declined", principal, route)
            if page:  # a URL-mode call may be waiting on another edge: the refusal must reach it
                await self.grants.revoke(principal.id, route.server, route.name, edge=self.edge)
            raise MCPError(code=CONSENT_DECLINED, message=f"consent for {route.name!r} was declined")
        policy = self.current
        ttl = policy.consent_ttl_seconds if policy is not None else 30 * 86400.0
        await self.grants.grant(principal.id, route.server, route.name, ttl=ttl, edge=self.edge)
        metrics.CONSENT_DECISIONS.labels(route.server, "granted").inc()
        await self.record("consent.granted", principal, route)

    # -- identity and audit -----------------------------------------------------------------------
    def assertion(self, principal: Principal, server: str) -> str | None:
        return self.signer.assertion(principal, server) if self.signer is not None else None

    async def record(
        self, kind: str, principal: Principal, route: Route | None = None, *, outcome: str = "", reason: str = ""
    ) -> None:
        if kind.startswith("consent.") and route is not None:  # consent prompts show in the call's trace
            telemetry.event(kind, {"fedmcp.server": route.server, "gen_ai.tool.name": route.name, "outcome": outcome})
        if self.audit is None:
            return
        await self.audit.record(
            AuditEvent(
                kind=kind,  # type: ignore[arg-type]
                principal=principal.id,
                tenant=principal.tenant,
                server=route.server if route else "",
                tool=route.name if route else "",
                outcome=outcome,
                reason=reason,
            )
        )
