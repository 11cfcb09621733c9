"""The edge's consent page in a real headless Chromium, driven by playwright.

A client that cannot be asked gets -32016 with the page's URL; a client that declares
URL-mode elicitation gets the URL in `elicitation/create` and its call waits for the page.
The user here is Chromium: it opens the link, reads the question, clicks #approve or #deny.
Chromium is Debian's (`apt-get install chromium`; `.ci/run` installs it), never a
`playwright install` download.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import federation, python_server
from fedmcp.edge import governance
from fedmcp.shared import jsonrpc
from fedmcp.shared.natsserver import NatsServer
from mcp import Client
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from playwright.async_api import BrowserContext, async_playwright

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
# Needed on a closed network: no QUIC, no background fetches, no component updates.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh Chromium profile directory; fails (never skips) without Debian's Chromium, which CI installs."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does")
    return tmp_path / "chromium-profile"


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium, headless, on the given fresh profile."""
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=UI_TIMEOUT_MS,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


async def answer_in_browser(
    browser: BrowserContext, url: str, button: str, before_click: Callable[[], None] = lambda: None
) -> tuple[str, str]:
    """Open the consent link, click #approve or #deny; returns (the question, the outcome shown)."""
    page = await browser.new_page()
    try:
        shown = await page.goto(url)
        assert shown is not None and shown.status == 200
        question = await page.locator("#question").inner_text()
        before_click()
        await page.locator(f"#{button}").click()  # submits the form; the answer page replaces it
        outcome = page.locator("#outcome")
        await outcome.wait_for(state="visible")
        return question, await outcome.inner_text()
    finally:
        await page.close()


class UrlOnlyClient(Client):
    """An SDK client that declares URL-mode elicitation only.

    The SDK declares form *and* url whenever an elicitation callback is set (and the edge
    prefers form), so the capability ad is trimmed on this client's own session.
    """

    async def _build_session(self, exit_stack: AsyncExitStack) -> ClientSession:
        session = await super()._build_session(exit_stack)
        declare = session._build_capabilities

        def url_only(version: str) -> types.ClientCapabilities:
            return declare(version).model_copy(
                update={"elicitation": types.ElicitationCapability(url=types.UrlElicitationCapability())}
            )

        session._build_capabilities = url_only  # type: ignore[method-assign]
        return session


async def test_a_client_that_cannot_be_asked_approves_in_the_browser(nats_server: NatsServer, profile: Path) -> None:
    async with federation(nats_server.url) as fed, chromium(profile) as browser:
        await fed.add_server("vault", python_server("vault.py"))
        async with Client(fed.url, mode="legacy") as client:  # declares no elicitation
            with pytest.raises(MCPError) as needs:
                await client.call_tool("vault_wipe", {"what": "disk"})
            assert needs.value.error.code == jsonrpc.CONSENT_REQUIRED
            assert isinstance(needs.value.error.data, dict)
            url = needs.value.error.data["consentUrl"]
            assert url.startswith(fed.url.replace("/mcp", "/consent?"))

            question, outcome = await answer_in_browser(browser, url, "approve")
            assert "'wipe'" in question and "'vault'" in question
            assert outcome == "Allowed"

            # Granted: the same client's next call runs, no -32016 this time.
            result = await client.call_tool("vault_wipe", {"what": "disk"})
            assert not result.is_error
            assert result.structured_content == {"result": "wiped disk"}


async def _url_mode_call(
    fed: Any, browser: BrowserContext, button: str
) -> tuple[list[types.ElicitRequestURLParams], list[tuple[str, str]], dict[str, bool], Any]:
    """A URL-only client calls vault_wipe; its callback accepts and hands the URL to Chromium,
    which clicks `button` while the call waits. Returns (requests seen, page answers, whether
    the call was pending {"before click", "after outcome"}, the result or the MCPError)."""
    seen: list[types.ElicitRequestURLParams] = []
    answers: list[tuple[str, str]] = []
    finished = anyio.Event()
    pending: dict[str, bool] = {}
    outcome: Any = None
    async with anyio.create_task_group() as tg:

        def before_click() -> None:
            pending["before click"] = not finished.is_set()

        async def user(url: str) -> None:
            answers.append(await answer_in_browser(browser, url, button, before_click))
            pending["after outcome"] = not finished.is_set()

        async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            assert isinstance(params, types.ElicitRequestURLParams), params
            seen.append(params)
            tg.start_soon(user, params.url)  # the user goes to the page; the client says "opened it"
            return types.ElicitResult(action="accept")

        async with UrlOnlyClient(fed.url, mode="legacy", elicitation_callback=on_elicit) as client:
            try:
                outcome = await client.call_tool("vault_wipe", {"what": "disk"})
            except MCPError as exc:
                outcome = exc
            finally:
                finished.set()
    return seen, answers, pending, outcome


async def test_a_url_mode_client_is_sent_to_the_page_and_its_call_goes_on(
    nats_server: NatsServer, profile: Path
) -> None:
    async with federation(nats_server.url) as fed, chromium(profile) as browser:
        await fed.add_server("vault", python_server("vault.py"))
        with anyio.fail_after(60):
            seen, answers, pending, result = await _url_mode_call(fed, browser, "approve")
        # The edge sent URL mode (it would have sent form had the client declared form).
        assert len(seen) == 1 and seen[0].mode == "url"
        assert seen[0].url.startswith(fed.url.replace("/mcp", "/consent?"))
        assert "'wipe'" in seen[0].message and seen[0].elicitation_id
        [(question, shown)] = answers
        assert "'wipe'" in question and "'vault'" in question and shown == "Allowed"
        assert pending["before click"]  # the client had answered "accept"; the call waited for the page
        assert isinstance(result, types.CallToolResult) and not result.is_error
        assert result.structured_content == {"result": "wiped disk"}


async def test_a_url_mode_client_declined_in_the_browser(
    nats_server: NatsServer, profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#deny records the refusal, which ends the waiting call at once (-32017), not at the wait's end."""
    wait = 30.0
    monkeypatch.setattr(governance, "CONSENT_WAIT", wait)
    async with federation(nats_server.url) as fed, chromium(profile) as browser:
        await fed.add_server("vault", python_server("vault.py"))
        started = time.monotonic()
        with anyio.fail_after(60):
            seen, answers, pending, failed = await _url_mode_call(fed, browser, "deny")
        elapsed = time.monotonic() - started
        assert len(seen) == 1 and seen[0].mode == "url"
        [(question, shown)] = answers
        assert "'wipe'" in question and shown == "Declined"
        assert pending["before click"]  # the client had answered "accept"; the call waited for the page
        assert isinstance(failed, MCPError), failed
        assert failed.error.code == jsonrpc.CONSENT_DECLINED
        assert "was declined" in failed.error.message  # the refusal ended it
        assert elapsed < wait
        # Nothing was granted.
        assert fed.edge is not None
        grants = fed.edge.federated.governance.grants
        assert grants is not None and not grants.has("anonymous", "vault", "wipe")
