"""Server-to-client requests in all four front/back era combinations: elicitation, sampling, roots.

legacy front  + legacy back : the backing server's request travels the bus to exactly the calling client.
modern front  + modern back : input_required passes through, requestState sealed by the edge.
modern front  + legacy back : the mid-call request becomes input_required; the retry resumes the waiting call.
legacy front  + modern back : the edge asks the client with real requests and retries the backing call.
"""

from __future__ import annotations

import mcp_types as types
import pytest
from conftest import ask_everything, federation, on_elicit, python_server
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

COMBOS = [
    ("legacy", "legacy"),
    ("2026-07-28", "2026-07-28"),
    ("2026-07-28", "legacy"),
    ("legacy", "auto"),
]


@pytest.mark.parametrize(("front", "back"), COMBOS, ids=[f"{f}-front/{b}-back" for f, b in COMBOS])
async def test_elicitation_sampling_and_roots_in_every_era_combination(
    nats_server: NatsServer, front: str, back: str
) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("asker", python_server("asker.py", era=back))
        assert fed.edge is not None
        negotiated = fed.edge.view.table.servers["asker"].catalog.protocol_version
        assert (negotiated == "2025-11-25") == (back == "legacy")
        await ask_everything(fed.url, front)


@pytest.mark.parametrize("back", ["legacy", "auto"])
async def test_client_without_the_capability_gets_an_error_not_a_hang(nats_server: NatsServer, back: str) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("asker", python_server("asker.py", era=back))
        async with Client(fed.url, mode="2026-07-28") as client:
            with pytest.raises(MCPError) as err:
                result = await client.call_tool("asker_greet", {"name": "Ada"})
                assert result.is_error  # some servers report it as a tool error instead
                raise MCPError(code=-1, message=str(result.content))
            assert "elicitation" in str(err.value).lower() or "capab" in str(err.value).lower()


async def test_tampered_request_state_is_refused(nats_server: NatsServer) -> None:
    async with federation(nats_server.url) as fed:
        await fed.add_server("asker", python_server("asker.py", era="legacy"))
        async with Client(fed.url, mode="2026-07-28", elicitation_callback=on_elicit) as client:
            first = await client.session.call_tool("asker_greet", {"name": "Ada"}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult)
            assert first.request_state and first.request_state.startswith("fedmcp1.")
            forged = first.request_state[:-4] + ("AAAA" if not first.request_state.endswith("AAAA") else "BBBB")
            with pytest.raises(MCPError) as err:
                await client.session.call_tool(
                    "asker_greet",
                    {"name": "Ada"},
                    input_responses={"fedmcp": {"action": "accept", "content": {"ok": True}}},
                    request_state=forged,
                    allow_input_required=True,
                )
            assert err.value.error.code == -32602
            # The genuine state still completes the waiting call.
            done = await client.session.call_tool(
                "asker_greet",
                {"name": "Ada"},
                input_responses={"fedmcp": {"action": "accept", "content": {"ok": True}}},
                request_state=first.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            assert done.structured_content == {"result": "hello Ada (confirmed=True)"}


async def test_retry_lands_on_another_edge(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handshake-era backing server blocks mid-call; the client's retry reaches a different edge
    replica, which routes the answer to the waiting adapter call through the sealed state."""
    monkeypatch.setenv("FEDMCP_STATE_KEY", "q" * 43)  # 32 bytes, shared by both edges
    async with federation(nats_server.url) as fed:
        await fed.add_server("asker", python_server("asker.py", era="legacy"))
        other_url = await fed.add_edge()
        async with (
            Client(fed.url, mode="2026-07-28", elicitation_callback=on_elicit) as first,
            Client(other_url, mode="2026-07-28", elicitation_callback=on_elicit) as second,
        ):
            asked = await first.session.call_tool("asker_greet", {"name": "Grace"}, allow_input_required=True)
            assert isinstance(asked, types.InputRequiredResult)
            assert asked.input_requests and asked.input_requests["fedmcp"].method == "elicitation/create"
            done = await second.session.call_tool(
                "asker_greet",
                {"name": "Grace"},
                input_responses={"fedmcp": {"action": "accept", "content": {"ok": True}}},
                request_state=asked.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            assert done.structured_content == {"result": "hello Grace (confirmed=True)"}
