"""Every deny path of the edge and the adapters, with the exact status and error, and the audit trail.

Real NATS, real HTTP, real JWTs (signed here with an EC key whose JWKS the edge reads),
real Ed25519 identity assertions between edge and adapters, real consent round trips.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import mcp_types as types
import pytest
from conftest import SERVERS, Federation, demo_server, federation, python_server
from cryptography.hazmat.primitives.asymmetric import ec
from fedmcp.edge.auth import Authenticator, hash_api_key
from fedmcp.edge.http import serve_http
from fedmcp.edge.runtime import Edge, edge_runtime
from fedmcp.shared import audit, headers, identity, jsonrpc
from fedmcp.shared.config import BackingServer, EdgeAuth
from fedmcp.shared.grants import GrantStore
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.ops_http import bind
from fedmcp.shared.policy import Policy, PolicyStore, Principal, Rule
from fedmcp.shared.subjects import Subjects
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio
LEGACY = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


class Issuer:
    """A stand-in authorization server: an EC key and its JWKS file."""

    def __init__(self, tmp: Path, name: str, kid: str = "k1") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = tmp / f"jwks-{name}.json"
        self.jwks.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "ES256"}]}))

    def token(self, aud: str, *, sub: str = "alice", scope: str = "mcp:use", exp: float = 300, **extra: Any) -> str:
        claims = {"iss": "https://as.test", "sub": sub, "aud": aud, "exp": int(time.time() + exp), "scope": scope}
        return jwt.encode({**claims, **extra}, self.key, algorithm="ES256", headers={"kid": self.kid})


@asynccontextmanager
async def authed_edge(
    fed: Federation, tmp: Path, issuer: Issuer, key: Path, servers: frozenset[str] = frozenset({"vault", "demo"})
) -> AsyncIterator[tuple[str, Edge]]:
    """An edge replica that requires auth and signs identities; yields its URL (also its resource URI) and itself."""
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    api = tmp / "api-keys.json"
    api.write_text(
        json.dumps({"keys": [{"sha256": hash_api_key("fmk_service"), "principal": "svc", "scopes": ["mcp:use"]}]})
    )
    auth = EdgeAuth(
        resource=url,
        issuer="https://as.test",
        authorization_servers=["https://as.test"],
        jwks_file=str(issuer.jwks),
        required_scopes=["mcp:use"],
        api_keys_file=str(api),
    )
    stop = anyio.Event()
    async with edge_runtime(fed.nats_url, identity_key=str(key)) as edge, anyio.create_task_group() as tg:
        await edge.view.wait_until(lambda t: servers <= set(t.servers))
        tg.start_soon(lambda: serve_http(edge, sock, stop=stop, authenticator=Authenticator(auth)))
        yield url, edge
        stop.set()


def bearer(token: str) -> dict[str, str]:
    return {**LEGACY, "Authorization": f"Bearer {token}"}


async def audit_events(nats_url: str) -> list[audit.AuditEvent]:
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = Subjects().audit_stream("local")
        info = await js.stream_info(stream)
        events = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            assert msg.data is not None
            events.extend(audit.decode_all(msg.data))
        return events
    finally:
        await nc.close()


async def test_every_deny_path(nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = identity.write_key_pair(tmp_path / "keys")
    monkeypatch.setenv("FEDMCP_TRUSTED_EDGE_KEYS", str(public))  # adapters made below verify identities
    issuer, stranger = (
        Issuer(tmp_path, "as"),
        Issuer(tmp_path, "stranger", kid="k1"),
    )  # same kid, other key: bad signature
    async with federation(nats_server.url) as fed:
        await fed.add_server("vault", python_server("vault.py"))
        await fed.add_server("demo", demo_server())
        async with (
            authed_edge(fed, tmp_path, issuer, private) as (url, edge),
            httpx2.AsyncClient(timeout=10) as http,
        ):
            resource = url
            # Protected Resource Metadata at both well-known paths
            for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
                meta = (await http.get(url.replace("/mcp", path))).json()
                assert meta["resource"] == resource and meta["authorization_servers"] == ["https://as.test"]
            cases = {
                "no token": (LEGACY, 401, "invalid_request"),
                "malformed": (bearer("not-a-jwt"), 401, "invalid_token"),
                "bad signature": (bearer(stranger.token(resource)), 401, "invalid_token"),
                "expired": (bearer(issuer.token(resource, exp=-60)), 401, "invalid_token"),
                "wrong audience": (bearer(issuer.token("https://other.test/mcp")), 401, "invalid_token"),
                "unknown api key": (bearer("fmk_wrong"), 401, "invalid_token"),
                "missing scope": (bearer(issuer.token(resource, scope="other")), 403, "insufficient_scope"),
            }
            descriptions = {}
            for name, (hdrs, status, error) in cases.items():
                response = await http.post(url, json=INIT, headers=hdrs)
                assert response.status_code == status, name
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer ") and f'error="{error}"' in challenge, name
                assert (
                    f'resource_metadata="{url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")}"'
                    in challenge
                )
                assert 'scope="mcp:use"' in challenge, name
                descriptions[name] = response.json()["error_description"]
            assert descriptions["expired"] == "the token has expired"
            assert descriptions["wrong audience"] == "the token was issued for another resource"
            assert descriptions["bad signature"] == "the token's signature is invalid"
            assert descriptions["malformed"] == "the token is malformed"
            # A valid token and a valid API key get in.
            for token in (issuer.token(resource), "fmk_service"):
                assert (await http.post(url, json=INIT, headers=bearer(token))).status_code == 200

            # Step-up: a tool that needs a scope the token lacks is a 403 naming it.
            nc_store = await _policy_store(fed)
            rules = [
                Rule(effect="allow", principals=["*"], tools=["add"], servers=["demo"], require_scopes=["demo:write"])
            ]
            async with _policy_applied(edge):
                await nc_store.set(Policy(rules=rules))
            session = await _session(http, url, issuer.token(resource))
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "demo_add", "arguments": {"a": 1, "b": 2}},
            }
            response = await http.post(url, json=call, headers=session)
            assert response.status_code == 403
            assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
            assert 'scope="demo:write"' in response.headers["www-authenticate"]
            stepped = await _session(http, url, issuer.token(resource, scope="mcp:use demo:write"))
            assert (await http.post(url, json=call, headers=stepped)).status_code == 200

            # A policy change hides a tool mid-session: gone from the list, and "unknown" when called.
            token = issuer.token(resource)
            authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            transport = streamable_http_client(url, http_client=authorized)
            async with authorized, Client(transport, mode="legacy") as client:
                assert "demo_echo" in {t.name for t in (await client.list_tools()).tools}
                async with _policy_applied(edge):  # within a second
                    await nc_store.set(Policy(rules=[Rule(effect="deny", principals=["alice"], tools=["echo"])]))
                assert "demo_echo" not in {t.name for t in (await client.list_tools()).tools}
                with pytest.raises(MCPError) as hidden:
                    await client.call_tool("demo_echo", {"text": "x"})
                with pytest.raises(MCPError) as unknown:
                    await client.call_tool("demo_nonexistent", {})
                assert hidden.value.error.code == unknown.value.error.code == jsonrpc.INVALID_PARAMS
                assert hidden.value.error.message == "Unknown tool: demo_echo"
        await nc_store.set(Policy())

        # Identity on the bus: forged, foreign-signed and replayed assertions are refused by the adapter.
        import nats

        nc = await nats.connect(nats_server.url)
        try:
            request = jsonrpc.encode_request("tools/list", None, 1)

            async def ask(server: str, assertion: str | None) -> dict[str, Any]:
                hdrs = headers.base(
                    {headers.DEADLINE: headers.deadline_in(10), headers.ACCEPT_BY: headers.deadline_in(5)}
                )
                if assertion is not None:
                    hdrs[headers.IDENTITY] = assertion
                reply = await nc.request(Subjects().rpc(server), request, timeout=10, headers=hdrs)
                body: dict[str, Any] = json.loads(reply.data)
                return body

            forger = identity.Signer(identity.Ed25519PrivateKey.generate(), issuer="mallory")
            edge_signer = identity.Signer(identity.load_private_key(private), issuer="edge")
            alice = Principal(id="alice", scopes=("mcp:use",))
            refusals = {
                "forged header": (await ask("demo", "eyJhbGciOiJub25lIn0.e30."))["error"],
                "no assertion": (await ask("demo", None))["error"],
                "unknown key": (await ask("demo", forger.assertion(alice, "demo")))["error"],
                "replayed to another server": (await ask("vault", edge_signer.assertion(alice, "demo")))["error"],
            }
            assert {e["code"] for e in refusals.values()} == {jsonrpc.UNAUTHORIZED}
            assert "unknown key" in refusals["forged header"]["message"]  # alg "none", no key id
            assert "no identity assertion" in refusals["no assertion"]["message"]
            assert "unknown key" in refusals["unknown key"]["message"]
            assert "another server" in refusals["replayed to another server"]["message"]
            hdrs = headers.base({headers.DEADLINE: headers.deadline_in(10), headers.ACCEPT_BY: headers.deadline_in(5)})
            hdrs[headers.IDENTITY] = edge_signer.assertion(alice, "demo")
            accepted = await nc.request(Subjects().rpc("demo"), request, timeout=10, headers=hdrs)
            assert (accepted.headers or {}).get(headers.KIND) == headers.Kind.ACCEPT  # the real thing is taken
        finally:
            await nc.close()
    kinds = [e.kind for e in await audit_events(nats_server.url)]
    assert kinds.count("denied") >= len(cases) + 1 + 4 + 1  # gate refusals, step-up, adapter refusals, hidden call


async def _policy_store(fed: Federation) -> PolicyStore:
    import nats

    nc = await nats.connect(fed.nats_url)
    fed.stack.push_async_callback(nc.close)
    return await PolicyStore.open(nc.jetstream(), Subjects(), create=False)


@asynccontextmanager
async def _policy_applied(edge: Edge) -> AsyncIterator[None]:
    """The body changes the policy; on exit the edge has applied it, within a second."""
    store = edge.federated.governance.policy
    assert store is not None
    applied = anyio.Event()

    async def listener(_: Policy) -> None:
        applied.set()

    store.on_change(listener)
    yield
    with anyio.fail_after(1):
        await applied.wait()


async def _session(http: httpx2.AsyncClient, url: str, token: str) -> dict[str, str]:
    response = await http.post(url, json=INIT, headers=bearer(token))
    session = {
        **bearer(token),
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    return session


async def test_consent_asked_declined_granted_and_revoked_across_edges(nats_server: NatsServer) -> None:
    answers: list[str] = []
    asked: list[str] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        action = answers.pop(0)
        return types.ElicitResult(action=action, content={"approve": True} if action == "accept" else None)  # type: ignore[arg-type]

    async with federation(nats_server.url) as fed:
        await fed.add_server("vault", python_server("vault.py"))
        second = await fed.add_edge()
        for mode in ("legacy", "2026-07-28"):
            asked.clear()
            async with Client(fed.url, mode=mode, elicitation_callback=on_elicit) as client:  # type: ignore[arg-type]
                assert (await client.call_tool("vault_peek", {"what": "x"})).structured_content == {
                    "result": "peeked x"
                }
                assert asked == []  # not destructive: no consent needed
                answers.append("decline")
                with pytest.raises(MCPError) as declined:
                    await client.call_tool("vault_wipe", {"what": "disk"})
                assert declined.value.error.code == jsonrpc.CONSENT_DECLINED
                answers.append("accept")
                assert (await client.call_tool("vault_wipe", {"what": "disk"})).structured_content == {
                    "result": "wiped disk"
                }
                assert len(asked) == 2 and "wipe" in asked[0]
                # Granted: no more questions, here or on the other edge.
                assert not (await client.call_tool("vault_wipe", {"what": "log"})).is_error
            async with Client(second, mode=mode, elicitation_callback=on_elicit) as other:  # type: ignore[arg-type]
                assert not (await other.call_tool("vault_wipe", {"what": "tmp"})).is_error
                assert len(asked) == 2
                # Revoked (as `fedmcp consent revoke` does) between two calls on different edges.
                store = await _grants(fed)
                assert await store.revoke("anonymous", "vault", "wipe") >= 1
                assert fed.edge is not None
                edge_grants = fed.edge.federated.governance.grants
                assert edge_grants is not None
                with anyio.fail_after(1):  # every edge stops honouring it within a second
                    await edge_grants.wait_until(lambda g: not g.has("anonymous", "vault", "wipe"))
                answers.append("decline")
                with pytest.raises(MCPError) as again:
                    await other.call_tool("vault_wipe", {"what": "tmp"})
                assert again.value.error.code == jsonrpc.CONSENT_DECLINED and len(asked) == 3
    kinds = [e.kind for e in await audit_events(nats_server.url)]
    assert kinds.count("consent.granted") == 2
    assert kinds.count("consent.declined") == 4
    assert kinds.count("consent.asked") >= 6


async def test_a_client_that_cannot_be_asked_gets_the_consent_page(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("vault", python_server("vault.py"))
        async with Client(fed.url, mode="legacy") as client:  # declares no elicitation
            with pytest.raises(MCPError) as needs:
                await client.call_tool("vault_wipe", {"what": "disk"})
        assert needs.value.error.code == jsonrpc.CONSENT_REQUIRED
        page = needs.value.error.data["consentUrl"]  # type: ignore[index]
        assert page.startswith(fed.url.replace("/mcp", "/consent?"))
        async with httpx2.AsyncClient(timeout=10) as http:
            shown = await http.get(page)
            assert shown.status_code == 200 and "wipe" in shown.text
            form = dict(httpx2.URL(page).params)
            done = await http.post(page.split("?")[0], data={**form, "action": "approve"})
            assert "Allowed" in done.text
        async with Client(fed.url, mode="legacy") as client:
            assert not (await client.call_tool("vault_wipe", {"what": "disk"})).is_error


async def _grants(fed: Federation) -> GrantStore:
    import nats

    nc = await nats.connect(fed.nats_url)
    fed.stack.push_async_callback(nc.close)
    store = await GrantStore.open(nc.jetstream(), Subjects(), create=False)
    await store.load()
    return store


async def test_front_tokens_never_reach_the_backing_server(nats_server: NatsServer, tmp_path: Path) -> None:
    """The adapter authenticates to its server with its own credentials; the client's token stays at the edge."""
    from fedmcp.shared.natsserver import free_port
    from procs import Proc

    port = free_port()
    backing = Proc([sys.executable, str(SERVERS / "probe_server.py"), "http", str(port)], tmp_path / "probe.log")
    try:
        private, _ = identity.write_key_pair(tmp_path / "keys")
        issuer = Issuer(tmp_path, "as")
        async with federation(nats_server.url) as fed:
            own = {"Authorization": "Bearer adapter-own-credential"}
            await fed.add_server("probe", BackingServer(url=f"http://127.0.0.1:{port}/mcp", headers=own))
            async with authed_edge(fed, tmp_path, issuer, private, frozenset({"probe"})) as (url, _):
                token = issuer.token(url)
                authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
                async with authorized, Client(streamable_http_client(url, http_client=authorized)) as client:
                    seen = await client.call_tool("probe_header", {"name": "authorization"})
                    assert seen.structured_content == {"result": "Bearer adapter-own-credential"}
                    assert token not in json.dumps(seen.model_dump())
    finally:
        backing.stop()


async def test_a_session_serves_only_the_principal_that_opened_it(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's session id with Bob's token is an unknown session (404), on the lane's path and the SDK's."""
    private, public = identity.write_key_pair(tmp_path / "keys")
    monkeypatch.setenv("FEDMCP_TRUSTED_EDGE_KEYS", str(public))
    issuer = Issuer(tmp_path, "as")
    async with federation(nats_server.url) as fed:
        await fed.add_server("vault", python_server("vault.py"))
        await fed.add_server("demo", demo_server())
        async with authed_edge(fed, tmp_path, issuer, private) as (url, _), httpx2.AsyncClient(timeout=10) as http:
            alice = await _session(http, url, issuer.token(url))
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "demo_echo", "arguments": {"text": "a"}},
            }
            mine = await http.post(url, json=call, headers=alice)
            assert mine.status_code == 200 and '"text":"a"' in mine.text.replace(" ", "")
            bob = {**alice, **bearer(issuer.token(url, sub="bob"))}
            for body in (
                call,
                {
                    **call,
                    "id": 3,
                    "params": {"name": "demo_echo", "arguments": {"text": "b"}, "_meta": {"progressToken": 1}},
                },
            ):
                stolen = await http.post(url, json=body, headers=bob)
                assert stolen.status_code == 404, stolen.text
                assert '"text":"' not in stolen.text.replace(" ", "")
