"""The consent page: where a user approves a tool when their client can only open a URL.

URL-mode elicitation sends the user here; the link carries a sealed, expiring
token bound to the principal (an unguessable capability, as URL-mode links are).
Approving records the grant every edge honours; the waiting call goes on.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fedmcp.edge.request_state import InvalidState
from fedmcp.shared.policy import Principal
from fedmcp.shared.routing import Route as ToolRoute
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from fedmcp.edge.server import FederatedServer

PATH = "/consent"
PAGE_KEY = "consent-page"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedmcp: consent</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto">
<h1>Allow this tool?</h1>
<p id="question">{question}</p>
<form method="post" action="{path}">
<input type="hidden" name="p" value="{principal}"><input type="hidden" name="t" value="{token}">
<button id="approve" name="action" value="approve" type="submit">Allow</button>
<button id="deny" name="action" value="deny" type="submit">Deny</button>
</form></body></html>"""

_DONE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedmcp: consent</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto">
<h1 id="outcome">{outcome}</h1><p>You can close this page and return to your client.</p></body></html>"""


def link(federated: FederatedServer, base_url: str, principal: Principal, server: str, tool: str) -> str:
    token = federated.sealer.new(server=server, principal=principal.id, key=PAGE_KEY, backend_state=tool)
    return f"{base_url.rstrip('/')}{PATH}?{urlencode({'p': principal.id, 't': token})}"


def consent_routes(federated: FederatedServer) -> list[Route]:
    def opened(principal: str, token: str) -> tuple[Principal, ToolRoute]:
        state = federated.sealer.open(token, principal=principal)
        if state.key != PAGE_KEY or not state.backend_state:
            raise InvalidState("not a consent link")
        return Principal(id=principal), ToolRoute(state.server, state.backend_state)

    async def show(request: Request) -> Response:
        principal, token = request.query_params.get("p", ""), request.query_params.get("t", "")
        try:
            who, route = opened(principal, token)
        except InvalidState as exc:
            return HTMLResponse(_DONE.format(outcome=html.escape(str(exc))), status_code=400)
        question = f"{who.id} is asked to allow the tool {route.name!r} of server {route.server!r}."
        page = _PAGE.format(
            question=html.escape(question), path=PATH, principal=html.escape(principal), token=html.escape(token)
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def answer(request: Request) -> Response:
        form = await request.form()
        try:
            who, route = opened(str(form.get("p", "")), str(form.get("t", "")))
        except InvalidState as exc:
            return HTMLResponse(_DONE.format(outcome=html.escape(str(exc))), status_code=400)
        try:
            await federated.governance.settle(who, route, form.get("action") == "approve", page=True)
        except MCPError:
            return HTMLResponse(_DONE.format(outcome="Declined"))
        return HTMLResponse(_DONE.format(outcome="Allowed"))

    return [Route(PATH, show, methods=["GET"]), Route(PATH, answer, methods=["POST"])]
