"""`fedmcp policy ...` and `fedmcp consent ...`: a region's authorization policy and consent grants.

policy show      the region's stored policy (--json: the document `policy set` takes back)
policy set FILE  store a TOML or JSON policy (compare-and-set on the revision)
policy check     would the policy allow PRINCIPAL this item, and by which rule
policy history   the stored versions
consent list     the consent grants the region honours (every region's, through its view)
consent revoke   revoke a principal's grants for a server or one of its tools
"""

from __future__ import annotations

import datetime
import functools
import getpass
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
import msgspec
from fedmcp.shared import bus, logs
from fedmcp.shared.audit import Audit, AuditEvent
from fedmcp.shared.buckets import NotCreatedYet, Region
from fedmcp.shared.grants import Grant, GrantStore
from fedmcp.shared.options import region_options, regions_option
from fedmcp.shared.policy import KINDS, Kind, Policy, PolicyError, PolicyStore, Principal, StalePolicy, load_file
from fedmcp.shared.subjects import Subjects
from nats.js import JetStreamContext

T = TypeVar("T")


def nats_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--prefix", default="fedmcp", show_default=True, help="Subject prefix of the federation.")(f)
    return click.option("--nats-url", envvar="FEDMCP_NATS_URL", default="nats://127.0.0.1:4222", show_default=True)(f)


@asynccontextmanager
async def jetstream(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await bus.connect(nats_url, name="fedmcp-admin", allow_reconnect=False)
    try:
        yield nc.jetstream(timeout=5)
        await nc.flush()
    finally:
        await nc.close()


def run(what: str, region: Region, nats_url: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`; turn what goes wrong into one line, no traceback."""
    logs.configure("cli", region=region.name, level="error")  # stdout is for the answer
    try:
        return anyio.run(work)
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f"cannot {what} in region {region.name!r} at {nats_url}: {exc!r}") from None


def when(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(doc: object) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


async def record(js: JetStreamContext, prefix: str, region: Region, event: AuditEvent) -> None:
    """An operator's change is a decision too: audit it (as the operator's login name) and wait for the ack."""
    audit = Audit(js._nc, Subjects(prefix), region, edge="fedmcp-cli", create=False, patience=5)
    try:
        await audit.start()
    except Exception as exc:  # no audit stream (no manager ran yet): the change stands, say so
        click.echo(f"warning: not audited ({exc!r})", err=True)
        return
    await audit.record(msgspec.structs.replace(event, principal=event.principal or f"operator:{getpass.getuser()}"))
    await audit.flush()


async def stored_policy(js: JetStreamContext, prefix: str, region: Region) -> PolicyStore | None:
    """The region's policy store; None when no policy was ever set (the bucket does not exist)."""
    try:
        return await PolicyStore.open(js, Subjects(prefix), region, create=False, patience=2)
    except NotCreatedYet:
        return None


# -- policy ---------------------------------------------------------------------------


@click.group("policy")
def policy_group() -> None:
    """The region's authorization policy (bucket <prefix>_policy_<region>)."""


def render_policy(policy: Policy, revision: int) -> str:
    lines = [
        f"revision {revision}  version {policy.version}  updated {when(policy.updated_at)}",
        f"default: {policy.default}",
        f"consent: destructive tools {'need' if policy.consent_destructive else 'do not need'} consent; "
        f"grants last {policy.consent_ttl_seconds:g} s",
    ]
    for i, rule in enumerate(policy.rules):
        lines.append(f"  #{i} {msgspec.json.encode(rule).decode()}")
    for c in policy.consent:
        lines.append(f"  consent {msgspec.json.encode(c).decode()}")
    if not policy.rules:
        lines.append("  (no rules)")
    return "\n".join(lines)


@policy_group.command("show")
@nats_options
@region_options
@click.option("--json", "as_json", is_flag=True, help="The policy document, as `policy set` takes it.")
def policy_show(nats_url: str, prefix: str, region: Region, as_json: bool) -> None:
    """Show the region's stored policy."""

    async def work() -> tuple[Policy, int, str | None]:
        async with jetstream(nats_url) as js:
            store = await stored_policy(js, prefix, region)
            return (Policy(), 0, None) if store is None else (store.current, store.revision, store.error)

    policy, revision, error = run("read the policy", region, nats_url, work)
    if error:
        raise click.ClickException(f"{error} (edges deny everything until it is fixed)")
    if as_json:
        click.echo(dumps(msgspec.to_builtins(policy)))
    elif revision == 0:
        click.echo(f"no policy stored in region {region.name!r}: everything is allowed")
    else:
        click.echo(render_policy(policy, revision))


@policy_group.command("set")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@nats_options
@region_options
@click.option(
    "--revision", type=int, default=None, help="Store only if the stored policy is still at this revision (0: none)."
)
def policy_set(file: Path, nats_url: str, prefix: str, region: Region, revision: int | None) -> None:
    """Validate FILE (TOML or JSON) and store it as the region's policy."""
    try:
        policy = load_file(file)
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy: {exc}") from None

    async def work() -> tuple[int, int]:
        async with jetstream(nats_url) as js:
            store = await PolicyStore.open(js, Subjects(prefix), region, create=True, patience=10)
            try:
                new = await store.set(policy, revision=revision)
            except StalePolicy as exc:
                raise click.ClickException(str(exc)) from None
            await record(js, prefix, region, AuditEvent(kind="policy.changed", outcome=f"revision {new}"))
            return new, store.current.version

    new, version = run("store the policy", region, nats_url, work)
    click.echo(f"policy version {version} stored in region {region.name!r} at revision {new}")


@policy_group.command("check")
@click.argument("principal_id")
@click.argument("name", required=False, default="")
@click.option("--kind", type=click.Choice(KINDS), default="tool", show_default=True)
@click.option("--server", required=True, help="The backing server's name.")
@click.option("--scope", "scopes", multiple=True, help="A scope the principal holds (repeatable).")
@click.option("--group", "groups", multiple=True, help="A group the principal is in (repeatable).")
@click.option("--tenant", default="", help="The principal's tenant.")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), help="Check this file instead.")
@click.option("--json", "as_json", is_flag=True)
@nats_options
@region_options
def policy_check(
    principal_id: str,
    name: str,
    kind: Kind,
    server: str,
    scopes: tuple[str, ...],
    groups: tuple[str, ...],
    tenant: str,
    file: Path | None,
    as_json: bool,
    nats_url: str,
    prefix: str,
    region: Region,
) -> None:
    """Would the policy let PRINCIPAL_ID see NAME (a tool, resource URI or prompt of --server)?"""
    if kind != "server" and not name:
        raise click.UsageError(f"NAME (the {kind}) is required unless --kind server")
    if file is not None:
        try:
            policy = load_file(file)
        except PolicyError as exc:
            raise click.ClickException(f"invalid policy: {exc}") from None
    else:

        async def work() -> Policy:
            async with jetstream(nats_url) as js:
                store = await stored_policy(js, prefix, region)
                return Policy() if store is None else store.current

        policy = run("read the policy", region, nats_url, work)
    principal = Principal(principal_id, tenant=tenant, scopes=scopes, groups=groups)
    decision = policy.explain(principal, kind, server, name)
    verdict = "allow" if decision.allowed else "deny"
    if as_json:
        doc = {
            "allowed": decision.allowed,
            "rule": decision.rule,
            "reason": decision.reason(policy),
            "missing_scopes": list(decision.missing_scopes),
        }
        click.echo(dumps(doc))
        return
    click.echo(f"{verdict}: {kind} {server}{'/' + name if name else ''} for {principal_id}")
    click.echo(f"  by {decision.reason(policy)}")
    if decision.missing_scopes:
        click.echo(f"  visible, but a call needs scopes: {', '.join(decision.missing_scopes)}")


@policy_group.command("history")
@nats_options
@region_options
def policy_history(nats_url: str, prefix: str, region: Region) -> None:
    """The stored versions of the region's policy, oldest first."""

    async def work() -> list[tuple[int, Policy | None]]:
        async with jetstream(nats_url) as js:
            store = await stored_policy(js, prefix, region)
            return [] if store is None else await store.history()

    click.echo(f"{'REVISION':>8} {'VERSION':>7} {'UPDATED':<20} {'DEFAULT':<7} RULES")
    for revision, policy in run("read the policy history", region, nats_url, work):
        if policy is None:
            click.echo(f"{revision:>8} {'-':>7} {'-':<20} {'-':<7} (deleted or unreadable)")
        else:
            click.echo(
                f"{revision:>8} {policy.version:>7} {when(policy.updated_at):<20} {policy.default:<7} {len(policy.rules)}"
            )


# -- consent --------------------------------------------------------------------------


@click.group("consent")
def consent_group() -> None:
    """Consent grants, honoured by every edge of every region in --regions."""


def with_grants(f: Callable[..., Any]) -> Callable[..., Any]:
    """nats, region and --regions options; the command gets a `grants(work)` runner instead."""

    @functools.wraps(f)
    def command(*args: Any, nats_url: str, prefix: str, region: Region, regions: str, **kw: Any) -> Any:
        def grants(what: str, work: Callable[[GrantStore], Awaitable[T]]) -> T:
            async def go() -> T:
                async with jetstream(nats_url) as js:
                    try:
                        store = await GrantStore.open(
                            js, Subjects(prefix), region, regions, create=False, patience=5, resync_interval=None
                        )
                    except NotCreatedYet as exc:
                        raise click.ClickException(
                            f"region {region.name!r} has no consent grants yet ({exc} does not exist)"
                        ) from None
                    await store.load(patience=5)
                    return await work(store)

            return run(what, region, nats_url, go)

        return f(*args, grants=grants, **kw)

    return nats_options(region_options(regions_option(command)))


def state(store: GrantStore, grant: Grant) -> str:
    if grant.revoked:
        return "revoked"
    if not grant.live(time.time()):
        return "expired"
    return "active" if store.active(grant) else "revoked-by-server"


@consent_group.command("list")
@click.option("--principal", default=None, help="Only this principal's grants.")
@click.option("--active", "active_only", is_flag=True, help="Only grants that are in force.")
@click.option("--json", "as_json", is_flag=True)
@with_grants
def consent_list(principal: str | None, active_only: bool, as_json: bool, grants: Any) -> None:
    """The grants (and revocations) the region knows, from its view of every region."""

    async def work(store: GrantStore) -> list[tuple[Grant, str]]:
        return [(g, state(store, g)) for g in store.list(principal, active_only=active_only)]

    found: list[tuple[Grant, str]] = grants("read the consent grants", work)
    if as_json:
        click.echo(dumps([{**msgspec.to_builtins(g), "state": s} for g, s in found]))
        return
    click.echo(f"{'PRINCIPAL':<24} {'SERVER':<16} {'TOOL':<24} {'STATE':<17} {'ORIGIN':<8} {'GRANTED':<20} EXPIRES")
    for g, s in found:
        click.echo(
            f"{g.principal:<24} {g.server:<16} {g.tool:<24} {s:<17} {g.origin:<8} {when(g.granted_at):<20} {when(g.expires_at)}"
        )


@consent_group.command("revoke")
@click.option("--principal", required=True)
@click.option("--server", required=True)
@click.option("--tool", default=None, help="One tool (its backing name); default: the server and all its tools.")
@with_grants
def consent_revoke(principal: str, server: str, tool: str | None, grants: Any) -> None:
    """Revoke PRINCIPAL's consent for a server (or one tool), in every region that hears of it."""

    async def work(store: GrantStore) -> int:
        ended = await store.revoke(principal, server, tool, edge="fedmcp-cli")
        event = AuditEvent(kind="consent.revoked", principal=principal, server=server, tool=tool or "*")
        await record(store._js, store._subjects.prefix, store.region, event)
        return ended

    ended: int = grants("revoke consent", work)
    target = f"{server}/{tool}" if tool else f"{server} (every tool)"
    click.echo(f"revoked {ended} live grant(s) of {principal} on {target}")
