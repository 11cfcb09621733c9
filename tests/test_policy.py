"""Authorization policy: evaluation (pure), the region's stored policy (real nats-server), the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from fedmcp.shared import buckets, bus
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.policy import (
    ConsentRule,
    Kind,
    Policy,
    PolicyError,
    PolicyStore,
    Principal,
    Rule,
    StalePolicy,
    load_file,
    parse,
)
from fedmcp.shared.subjects import Subjects
from nats.aio.client import Client as NATS
from procs import fedmcp

pytestmark = pytest.mark.anyio
SUBJECTS = Subjects()

# -- evaluation ---------------------------------------------------------------------

DEFAULT_DENY = Policy(
    default="deny",
    rules=[
        Rule(effect="allow", principals=["group:eng"], servers=["github"], tools=["read_*", "list_*"]),  # 0
        Rule(effect="allow", principals=["group:eng"], servers=["github"], resources=["repo://*"]),  # 1
        Rule(effect="deny", principals=["user:bob"], servers=["github"], tools=["read_secret*"]),  # 2
        Rule(effect="allow", principals=["tenant:acme-*"], servers=["wiki"]),  # 3: the whole server
        Rule(effect="allow", principals=["scope:admin"], servers=["*"]),  # 4
        Rule(
            effect="allow",
            principals=["*"],
            servers=["deploy"],
            tools=["release"],
            require_scopes=["deploy:write", "audit"],
        ),  # 5
    ],
)
DEFAULT_ALLOW = Policy(
    rules=[
        Rule(effect="deny", principals=["group:contractors"], servers=["github"], tools=["delete_*"]),  # 0
        Rule(effect="deny", principals=["*"], servers=["billing"]),  # 1: the whole server
        Rule(effect="deny", principals=["user:svc:*", "mallory"], servers=["*"]),  # 2: ids with a colon; bare id
        Rule(effect="allow", principals=["group:contractors"], servers=["github"]),  # 3: deny still wins
    ]
)
ALICE = Principal("alice", groups=("eng",))
BOB = Principal("bob", groups=("eng",))
CAROL = Principal("carol", tenant="acme-eu")
DAVE = Principal("dave")
ROOT = Principal("root", scopes=("admin",))
CONTRACTOR = Principal("chris", groups=("contractors",))

CASES: list[tuple[Policy, Principal, Kind, str, str, bool, int | None]] = [
    # policy, principal, kind, server, name, allowed, deciding rule (None: the default)
    (DEFAULT_DENY, ALICE, "tool", "github", "read_file", True, 0),
    (DEFAULT_DENY, ALICE, "tool", "github", "delete_repo", False, None),
    (DEFAULT_DENY, ALICE, "resource", "github", "repo://fedmcp/README.md", True, 1),
    (DEFAULT_DENY, ALICE, "prompt", "github", "summarise", False, None),  # rules 0, 1 name other kinds only
    (DEFAULT_DENY, ALICE, "tool", "gitlab", "read_file", False, None),
    (DEFAULT_DENY, BOB, "tool", "github", "read_secret_key", False, 2),  # deny wins over rule 0
    (DEFAULT_DENY, BOB, "tool", "github", "read_file", True, 0),
    (DEFAULT_DENY, CAROL, "prompt", "wiki", "howto", True, 3),  # tenant glob, whole server
    (DEFAULT_DENY, DAVE, "prompt", "wiki", "howto", False, None),  # no tenant never matches tenant:*
    (DEFAULT_DENY, ROOT, "resource", "billing", "invoice://1", True, 4),  # scope pattern
    (DEFAULT_DENY, DAVE, "tool", "deploy", "release", True, 5),  # visible; calling it needs scopes
    (DEFAULT_DENY, ALICE, "server", "github", "", True, 0),  # some item of the server is allowed
    (DEFAULT_DENY, BOB, "server", "github", "", True, 0),  # rule 2 does not cover the whole server
    (DEFAULT_DENY, DAVE, "server", "github", "", False, None),
    (DEFAULT_ALLOW, CONTRACTOR, "tool", "github", "delete_repo", False, 0),
    (DEFAULT_ALLOW, CONTRACTOR, "tool", "github", "create_issue", True, 3),
    (DEFAULT_ALLOW, CONTRACTOR, "resource", "github", "repo://x/delete_me", True, 3),  # rule 0 is about tools
    (DEFAULT_ALLOW, CONTRACTOR, "server", "github", "", True, 3),
    (DEFAULT_ALLOW, DAVE, "tool", "github", "delete_repo", True, None),
    (DEFAULT_ALLOW, DAVE, "server", "billing", "", False, 1),
    (DEFAULT_ALLOW, DAVE, "prompt", "billing", "anything", False, 1),
    (DEFAULT_ALLOW, Principal("svc:ci"), "tool", "github", "read", False, 2),
    (DEFAULT_ALLOW, Principal("svc"), "tool", "github", "read", True, None),
    (DEFAULT_ALLOW, Principal("mallory"), "resource", "wiki", "page://x", False, 2),
]


@pytest.mark.parametrize(("policy", "principal", "kind", "server", "name", "allowed", "rule"), CASES)
def test_evaluation(
    policy: Policy, principal: Principal, kind: Kind, server: str, name: str, allowed: bool, rule: int | None
) -> None:
    assert policy.allows(principal, kind, server, name) is allowed
    assert policy.allows(principal, kind, server, name) is allowed  # the memoised answer is the same
    decision = policy.explain(principal, kind, server, name)
    assert (decision.allowed, decision.rule) == (allowed, rule)


def test_require_scopes_is_step_up_for_calls() -> None:
    assert DEFAULT_DENY.missing_scopes(DAVE, "tool", "deploy", "release") == ["deploy:write", "audit"]
    partly = Principal("erin", scopes=("deploy:write",))
    assert DEFAULT_DENY.missing_scopes(partly, "tool", "deploy", "release") == ["audit"]
    assert DEFAULT_DENY.explain(partly, "tool", "deploy", "release").missing_scopes == ("audit",)
    full = Principal("erin", scopes=("deploy:write", "audit"))
    assert DEFAULT_DENY.missing_scopes(full, "tool", "deploy", "release") == []
    assert DEFAULT_DENY.missing_scopes(DAVE, "tool", "deploy", "rollback") == []
    with pytest.raises(PolicyError, match="only meaningful on allow rules"):
        parse('rules = [{effect = "deny", principals = ["*"], require_scopes = ["x"]}]', "toml")


CONSENT = Policy(
    consent=[
        ConsentRule(servers=["github"], tools=["merge_*"]),
        ConsentRule(servers=["fs"], required=False),
        ConsentRule(servers=["fs"], tools=["rm"]),
    ]
)
DESTRUCTIVE = {"destructiveHint": True}


@pytest.mark.parametrize(
    ("policy", "server", "tool", "annotations", "needed"),
    [
        (CONSENT, "github", "merge_pr", None, True),  # a consent rule
        (CONSENT, "github", "read_file", None, False),
        (CONSENT, "github", "delete_repo", DESTRUCTIVE, True),  # destructive by annotation
        (CONSENT, "github", "delete_repo", {**DESTRUCTIVE, "readOnlyHint": True}, False),
        (CONSENT, "github", "delete_repo", {"destructiveHint": False}, False),
        (CONSENT, "fs", "write", DESTRUCTIVE, False),  # a rule waives it
        (CONSENT, "fs", "rm", None, True),  # required wins over a waiver
        (Policy(consent_destructive=False), "github", "delete_repo", DESTRUCTIVE, False),
    ],
)
def test_needs_consent(
    policy: Policy, server: str, tool: str, annotations: dict[str, Any] | None, needed: bool
) -> None:
    assert policy.needs_consent(server, tool, annotations) is needed


GOOD_TOML = """
default = "allow"
consent_ttl_seconds = 86400

[[rules]]
name = "no deletes for contractors"
effect = "deny"
principals = ["group:contractors"]
servers = ["github"]
tools = ["delete_*"]

[[consent]]
servers = ["github"]
tools = ["merge_*"]
"""


def test_files_are_validated_with_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "policy.toml"
    good.write_text(GOOD_TOML)
    policy = load_file(good)
    assert policy.rules[0].name == "no deletes for contractors" and policy.consent_ttl_seconds == 86400.0
    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps(msgspec.to_builtins(policy)))
    assert load_file(as_json) == policy
    bad = {
        'rules = [{effect = "maybe", principals = ["*"]}]': r"Invalid enum value 'maybe' - at `\$.rules\[0\].effect`",
        "rulez = []": "unknown field `rulez`",
        'rules = [{effect = "allow"}]': "missing required field `principals`",
        'rules = [{effect = "allow", principals = ["group:"]}]': "empty principal pattern",
        "consent_ttl_seconds = 0": "must be positive",
        "default = [": "not valid TOML",
    }
    for text, error in bad.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(PolicyError, match=error):
            load_file(path)
    with pytest.raises(PolicyError, match="No such file"):
        load_file(tmp_path / "missing.toml")


# -- the stored policy ----------------------------------------------------------------

NO_DELETES = Policy(rules=[Rule(effect="deny", principals=["*"], servers=["github"], tools=["delete_*"])])
NO_GITHUB = Policy(rules=[Rule(effect="deny", principals=["*"], servers=["github"])])


@asynccontextmanager
async def connections(url: str, n: int) -> AsyncIterator[list[NATS]]:
    ncs = [await bus.connect(url, name=f"test-policy-{i}") for i in range(n)]
    try:
        yield ncs
    finally:
        for nc in ncs:
            await nc.close()


async def test_a_new_policy_takes_effect_on_another_connection_within_a_second(nats_server: NatsServer) -> None:
    async with connections(nats_server.url, 2) as (a, b):
        writer = await PolicyStore.open(a.jetstream(), SUBJECTS)
        edge = await PolicyStore.open(b.jetstream(), SUBJECTS, create=False)
        assert edge.revision == 0 and edge.current.allows(DAVE, "tool", "github", "delete_repo")  # none yet
        seen: list[Policy] = []
        changed = anyio.Event()

        async def on_change(policy: Policy) -> None:
            nonlocal changed
            seen.append(policy)
            changed.set()
            changed = anyio.Event()

        edge.on_change(on_change)
        async with anyio.create_task_group() as tg:
            await tg.start(edge.run)
            for policy in (NO_DELETES, NO_GITHUB):
                waiting = changed
                revision = await writer.set(policy)
                with anyio.fail_after(1):
                    await waiting.wait()
                assert edge.revision == revision and edge.current.rules == policy.rules
            tg.cancel_scope.cancel()
    assert [p.version for p in seen] == [1, 2]
    assert not seen[0].allows(DAVE, "tool", "github", "delete_repo")
    assert seen[0].allows(DAVE, "tool", "github", "read_file")
    assert not seen[1].allows(DAVE, "tool", "github", "read_file")


async def test_a_stale_write_is_rejected(nats_server: NatsServer) -> None:
    async with connections(nats_server.url, 2) as (a, b):
        first = await PolicyStore.open(a.jetstream(), SUBJECTS)
        r1 = await first.set(NO_DELETES)
        second = await PolicyStore.open(b.jetstream(), SUBJECTS)  # reads revision r1
        r2 = await first.set(NO_GITHUB)
        with pytest.raises(StalePolicy, match=f"since revision {r1}"):
            await second.set(Policy())  # based on r1, which is no longer current
        with pytest.raises(StalePolicy):
            await first.set(Policy(), revision=r1)
        with pytest.raises(StalePolicy):
            await second.set(Policy(), revision=0)  # "only if none is stored"
        assert (await second.refresh()).rules == NO_GITHUB.rules and second.revision == r2
        r3 = await second.set(Policy(default="deny"))
        assert r3 > r2 and second.current.version == 3
        assert [(r, p.version if p else None) for r, p in await first.history()] == [(r1, 1), (r2, 2), (r3, 3)]


async def test_an_unreadable_stored_policy_denies_everything(nats_server: NatsServer) -> None:
    async with connections(nats_server.url, 1) as (nc,):
        js = nc.jetstream()
        store = await PolicyStore.open(js, SUBJECTS)
        kv = await buckets.open_bucket(js, SUBJECTS, buckets.POLICY, buckets.LOCAL, history=10)
        await kv.put("current", b'{"default": "sometimes"}')
        policy = await store.refresh()
        assert not policy.allows(ROOT, "tool", "github", "read_file")
        assert store.error is not None and "sometimes" in store.error


# -- the CLI ----------------------------------------------------------------------------


async def cli(*args: str, check: bool = True) -> tuple[int, str, str]:
    result = await anyio.run_process(fedmcp(*args), check=False)
    out, err = result.stdout.decode(), result.stderr.decode()
    if check:
        assert result.returncode == 0, err
    return result.returncode, out, err


async def test_cli_policy_set_show_check(nats_server: NatsServer, tmp_path: Path) -> None:
    url = ["--nats-url", nats_server.url]
    _, out, _ = await cli("policy", "show", *url)  # no bucket yet
    assert "everything is allowed" in out
    good = tmp_path / "policy.toml"
    good.write_text(GOOD_TOML)
    _, out, _ = await cli("policy", "set", str(good), *url)
    assert "policy version 1 stored in region 'local' at revision" in out
    _, out, _ = await cli("policy", "show", "--json", *url)
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["rules"][0]["tools"] == ["delete_*"]
    _, out, _ = await cli("policy", "show", *url)
    assert "no deletes for contractors" in out and "default: allow" in out

    check = ["policy", "check", "chris", "--server", "github", *url]
    _, out, _ = await cli(*check, "delete_repo", "--group", "contractors")
    assert out.startswith("deny: tool github/delete_repo for chris")
    assert "rule #0 (no deletes for contractors) deny" in out
    _, out, _ = await cli(*check, "delete_repo")
    assert out.startswith("allow") and "no rule matched: default allow" in out
    _, out, _ = await cli(*check, "--json", "--kind", "server", "--group", "contractors")
    assert json.loads(out)["allowed"] is True  # the rule is about some tools only

    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\neffect = "maybe"\nprincipals = ["*"]\n')
    code, _, err = await cli("policy", "set", str(bad), *url, check=False)
    assert code == 1 and "invalid policy" in err and "$.rules[0].effect" in err and "Traceback" not in err
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps({**shown, "default": "deny"}))  # `show --json` is a valid input
    _, out, _ = await cli("policy", "set", str(exported), "--revision", "1", *url)
    assert "policy version 2" in out and "at revision 2" in out
    code, _, err = await cli("policy", "set", str(good), "--revision", "1", *url, check=False)
    assert code == 1 and "changed since revision 1" in err  # someone else's write came first
    _, out, _ = await cli("policy", "history", *url)
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["1", "2"]
