"""Authorization policy: who may see and call which tools, resources and prompts, and which calls need consent.

Evaluation is pure and runs on every list and call, so a `Policy` compiles its globs once
(lazily, on first use) and caches, per principal, the rules whose `principals` match it.

Model:

- A `Rule` matches a request when one of its `principals` patterns matches the principal,
  one of its `servers` globs matches the server, and the item's name matches the rule's
  globs for that kind (`tools`, `resources` by URI, `prompts`). A rule that names none of
  `tools`/`resources`/`prompts` covers every item of its servers; a rule that names some
  of them covers only those kinds (a deny rule about `tools = ["delete_*"]` leaves the
  server's resources and prompts alone).
- **Deny wins**: any matching deny rule denies; else any matching allow rule allows; else
  `default` decides.
- Kind `"server"` asks "may the principal use anything of this server": a deny rule denies
  it only when it covers the whole server; an allow rule allows it when it covers any item.
- `require_scopes` (allow rules only) is step-up: a matching item stays visible but needs
  those scopes to be called (`missing_scopes`).
- Consent (`needs_consent`): a matching `ConsentRule` with `required = true` wins over one
  with `required = false`; with no matching rule, tools annotated `destructiveHint: true`
  (and not `readOnlyHint: true`) need consent when `consent_destructive`.
- Names are the items' names on their backing server (not the federated `<server>_<name>`);
  globs are `fnmatch.fnmatchcase` (`*` also matches `/` in URIs).

Principal patterns: `*` (everyone), `alice` or `user:alice` (id glob), `group:<glob>`,
`tenant:<glob>` (never matches a principal without a tenant), `scope:<glob>`. An id that
itself contains a colon is written `user:<id>`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import structlog
from fedmcp.shared import buckets
from fedmcp.shared.subjects import Subjects
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.policy")

Effect = Literal["allow", "deny"]
Kind = Literal["tool", "resource", "prompt", "server"]
KINDS: tuple[Kind, ...] = ("tool", "resource", "prompt", "server")
DEFAULT_CONSENT_TTL = 30 * 86400.0
_PRINCIPAL_KINDS = ("user", "group", "tenant", "scope")


class PolicyError(ValueError):
    """A policy (file or stored value) that does not decode or validate."""


class Principal(msgspec.Struct, frozen=True):
    """Who is asking: the edge builds it from the client's credentials."""

    id: str
    tenant: str = ""
    scopes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    effect: Effect
    principals: list[str]
    servers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    tools: list[str] | None = None
    resources: list[str] | None = None
    prompts: list[str] | None = None
    require_scopes: list[str] = msgspec.field(default_factory=list)
    name: str = ""
    """A label shown by `fedmcp policy check`."""

    def __post_init__(self) -> None:
        for pattern in self.principals:
            kind, sep, glob = pattern.partition(":")
            if not pattern or (sep and kind in _PRINCIPAL_KINDS and not glob):
                raise ValueError(f"empty principal pattern {pattern!r}")
        if self.require_scopes and self.effect != "allow":
            raise ValueError("require_scopes is only meaningful on allow rules")

    def items(self, kind: Kind) -> list[str]:
        """The rule's globs for `kind` once defaults are applied (see the module docstring)."""
        given = {"tool": self.tools, "resource": self.resources, "prompt": self.prompts}
        if all(v is None for v in given.values()):
            return ["*"]
        return given.get(kind) or []


class ConsentRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    servers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    tools: list[str] = msgspec.field(default_factory=lambda: ["*"])
    required: bool = True


class Decision(msgspec.Struct, frozen=True):
    """An evaluation with its reason: the deciding rule's index in `Policy.rules`, or None (default)."""

    allowed: bool
    rule: int | None
    missing_scopes: tuple[str, ...] = ()

    def reason(self, policy: Policy) -> str:
        if self.rule is None:
            return f"no rule matched: default {policy.default}"
        rule = policy.rules[self.rule]
        label = f" ({rule.name})" if rule.name else ""
        return f"rule #{self.rule}{label} {rule.effect}: {msgspec.json.encode(rule).decode()}"


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """Treat as immutable once evaluated: the compiled form is cached on first use."""

    default: Effect = "allow"
    rules: list[Rule] = msgspec.field(default_factory=list)
    consent: list[ConsentRule] = msgspec.field(default_factory=list)
    consent_destructive: bool = True
    consent_ttl_seconds: float = DEFAULT_CONSENT_TTL
    version: int = 0
    """Stamped by `PolicyStore.set`: one more than the version it replaced."""
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if self.consent_ttl_seconds <= 0:
            raise ValueError("consent_ttl_seconds must be positive")

    @cached_property
    def _engine(self) -> _Engine:
        return _Engine(self)

    def allows(self, principal: Principal, kind: Kind, server: str, name: str = "") -> bool:
        return self._engine.decide(principal, kind, server, name)[0]

    def explain(self, principal: Principal, kind: Kind, server: str, name: str = "") -> Decision:
        allowed, rule = self._engine.decide(principal, kind, server, name)
        missing = self.missing_scopes(principal, kind, server, name) if allowed else []
        return Decision(allowed, None if rule is None else rule.index, tuple(missing))

    def missing_scopes(self, principal: Principal, kind: Kind, server: str, name: str = "") -> list[str]:
        """Scopes the principal lacks to *call* the item (step-up); [] when it has them all."""
        missing: list[str] = []
        for rule in self._engine.rules_at(principal, server):
            if rule.require_scopes and rule.effect == "allow" and rule.covers(kind, server, name):
                missing.extend(s for s in rule.require_scopes if s not in principal.scopes and s not in missing)
        return missing

    def needs_consent(self, server: str, tool: str, annotations: dict[str, Any] | None = None) -> bool:
        return self._engine.needs_consent(server, tool, annotations)


# -- compiled form -----------------------------------------------------------------


class _Globs:
    """A list of globs as one anchored regex; `*` alone short-circuits."""

    __slots__ = ("everything", "regex")

    def __init__(self, globs: Iterable[str]) -> None:
        globs = list(globs)
        self.everything = "*" in globs
        self.regex = None
        if globs and not self.everything:
            self.regex = re.compile("|".join(fnmatch.translate(g) for g in globs))

    def __call__(self, value: str) -> bool:
        return self.everything or (self.regex is not None and self.regex.match(value) is not None)

    def any(self, values: Sequence[str]) -> bool:
        return any(self(v) for v in values)


class _Principals:
    __slots__ = ("everyone", "groups", "ids", "scopes", "tenants")

    def __init__(self, patterns: list[str]) -> None:
        by_kind: dict[str, list[str]] = {k: [] for k in _PRINCIPAL_KINDS}
        for pattern in patterns:
            kind, sep, glob = pattern.partition(":")
            if sep and kind in by_kind:
                by_kind[kind].append(glob)
            else:
                by_kind["user"].append(pattern)
        self.everyone = "*" in patterns
        self.ids = _Globs(by_kind["user"])
        self.groups = _Globs(by_kind["group"])
        self.tenants = _Globs(by_kind["tenant"])
        self.scopes = _Globs(by_kind["scope"])

    def __call__(self, p: Principal) -> bool:
        return (
            self.everyone
            or self.ids(p.id)
            or self.groups.any(p.groups)
            or self.scopes.any(p.scopes)
            or (bool(p.tenant) and self.tenants(p.tenant))
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    effect: Effect
    principals: _Principals
    servers: _Globs
    items: dict[str, _Globs]
    whole_server: bool
    some_item: bool
    require_scopes: tuple[str, ...]

    @classmethod
    def of(cls, index: int, rule: Rule) -> _Rule:
        items = {k: rule.items(k) for k in ("tool", "resource", "prompt")}
        return cls(
            index,
            rule.effect,
            _Principals(rule.principals),
            _Globs(rule.servers),
            {k: _Globs(v) for k, v in items.items()},
            whole_server=all(v == ["*"] for v in items.values()),
            some_item=any(items.values()),
            require_scopes=tuple(rule.require_scopes),
        )

    def covers(self, kind: Kind, server: str, name: str) -> bool:
        if not self.servers(server):
            return False
        if kind == "server":
            return self.whole_server if self.effect == "deny" else self.some_item
        return self.items[kind](name)


class _Engine:
    _CACHE = 4096

    def __init__(self, policy: Policy) -> None:
        self.default_allows = policy.default == "allow"
        self.rules = [_Rule.of(i, r) for i, r in enumerate(policy.rules)]
        self.consent = [(_Globs(c.servers), _Globs(c.tools), c.required) for c in policy.consent]
        self.consent_destructive = policy.consent_destructive
        self._by_principal: dict[Principal, tuple[_Rule, ...]] = {}
        self._by_server: dict[tuple[Principal, str], tuple[_Rule, ...]] = {}
        self._decisions: dict[tuple[Principal, str, str, str], tuple[bool, _Rule | None]] = {}

    def rules_for(self, principal: Principal) -> tuple[_Rule, ...]:
        """The rules whose `principals` match, cached per principal (a bounded cache, cleared when full)."""
        rules = self._by_principal.get(principal)
        if rules is None:
            if len(self._by_principal) >= self._CACHE:
                self._by_principal.clear()
            rules = self._by_principal[principal] = tuple(r for r in self.rules if r.principals(principal))
        return rules

    def rules_at(self, principal: Principal, server: str) -> tuple[_Rule, ...]:
        """... whose `servers` match too: what is left to check per item is one regex per rule."""
        key = (principal, server)
        rules = self._by_server.get(key)
        if rules is None:
            if len(self._by_server) >= self._CACHE * 4:
                self._by_server.clear()
            rules = self._by_server[key] = tuple(r for r in self.rules_for(principal) if r.servers(server))
        return rules

    def decide(self, principal: Principal, kind: Kind, server: str, name: str) -> tuple[bool, _Rule | None]:
        """Memoised: the same principal lists the same catalog over and over."""
        key = (principal, kind, server, name)
        hit = self._decisions.get(key)
        if hit is None:
            if len(self._decisions) >= self._CACHE * 16:
                self._decisions.clear()
            hit = self._decisions[key] = self._decide(principal, kind, server, name)
        return hit

    def _decide(self, principal: Principal, kind: Kind, server: str, name: str) -> tuple[bool, _Rule | None]:
        allowed_by: _Rule | None = None
        for rule in self.rules_at(principal, server):
            if rule.covers(kind, server, name):
                if rule.effect == "deny":
                    return False, rule
                allowed_by = allowed_by or rule
        if allowed_by is not None:
            return True, allowed_by
        return self.default_allows, None

    def needs_consent(self, server: str, tool: str, annotations: dict[str, Any] | None) -> bool:
        waived = False
        for servers, tools, required in self.consent:
            if servers(server) and tools(tool):
                if required:
                    return True
                waived = True
        if waived or not self.consent_destructive or not annotations:
            return False
        return annotations.get("destructiveHint") is True and annotations.get("readOnlyHint") is not True


# -- files and wire ----------------------------------------------------------------

encode = msgspec.json.Encoder(order="deterministic").encode
_decoder = msgspec.json.Decoder(Policy)


def decode(data: bytes) -> Policy:
    try:
        return _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PolicyError(str(exc)) from None


def parse(text: str, fmt: Literal["toml", "json"]) -> Policy:
    """A policy document; PolicyError names what is wrong and where (`$.rules[0].effect`)."""
    try:
        raw = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"not valid {fmt.upper()}: {exc}") from None
    try:
        return msgspec.convert(raw, Policy)
    except msgspec.ValidationError as exc:
        raise PolicyError(str(exc)) from None


def load_file(path: Path) -> Policy:
    """A policy file: `.toml` or `.json` by suffix (anything else is tried as JSON, then TOML)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    formats: list[Literal["toml", "json"]] = (
        ["toml"] if suffix == ".toml" else ["json"] if suffix == ".json" else ["json", "toml"]
    )
    error: PolicyError | None = None
    for fmt in formats:
        try:
            return parse(text, fmt)
        except PolicyError as exc:
            error = error or exc
    assert error is not None
    raise PolicyError(f"{path}: {error}")


# -- the region's stored policy ------------------------------------------------------

KEY = "current"
DENY_ALL = Policy(default="deny")
"""What an edge enforces while the stored policy cannot be read: fail closed."""
PolicyListener = Callable[[Policy], Awaitable[None]]


class StalePolicy(Exception):
    """`PolicyStore.set` was based on a revision that is no longer the current one."""


class PolicyStore:
    """The region's policy (bucket `<p>_policy_<region>`, key `current`, history 10), kept in memory.

    With no stored policy, `current` is `Policy()` (allow everything, fedmcp's behaviour
    without a policy); with an unreadable one it is `DENY_ALL` and `error` says why."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.current: Policy = Policy()
        self.revision = 0
        """KV revision of `current`; 0: none stored."""
        self.error: str | None = None
        self._listeners: list[PolicyListener] = []

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        subjects: Subjects,
        region: buckets.Region = buckets.LOCAL,
        *,
        create: bool = True,
        patience: float = 30.0,
    ) -> PolicyStore:
        """Bind to (with `create`: create) the region's policy bucket and read the policy (direct get)."""
        kv = await buckets.open_bucket(
            js, subjects, buckets.POLICY, region, history=10, patience=patience, create=create
        )
        store = cls(kv)
        # A bucket that was just created may have no stream leader yet: "no responders" for a moment.
        await buckets.patiently(store.refresh, patience)
        return store

    def on_change(self, listener: PolicyListener) -> None:
        self._listeners.append(listener)

    async def refresh(self) -> Policy:
        """Read the stored policy once (a direct get, which works during a partition)."""
        try:
            entry = await self._kv.get(KEY)
        except KeyNotFoundError as exc:  # never set, or deleted (then the marker's revision)
            marker = getattr(exc, "entry", None)
            await self._apply(None, getattr(marker, "revision", None) or 0)
        else:
            await self._apply(entry.value, entry.revision or 0)
        return self.current

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch the key: a `set` anywhere takes effect here within milliseconds."""
        task_status.started()  # `open` has read the policy already

        async def handle(entry: Any) -> None:
            deleted = entry.operation in ("DEL", "PURGE")
            await self._apply(None if deleted else entry.value, entry.revision or 0)

        await buckets.follow(lambda: self._kv.watch(KEY), handle, "policy")

    async def _apply(self, data: bytes | None, revision: int) -> None:
        if revision and revision <= self.revision:
            return  # seen already (open's read, then the watch's first value)
        try:
            policy, error = (decode(data), None) if data else (Policy(), None)
        except PolicyError as exc:
            policy, error = DENY_ALL, f"stored policy at revision {revision} unreadable: {exc}"
            log.error("policy unreadable: denying everything", revision=revision, error=str(exc))
        self.current, self.revision, self.error = policy, revision, error
        log.info("policy loaded", revision=revision, version=policy.version, rules=len(policy.rules))
        for listener in self._listeners:
            try:
                await listener(policy)
            except Exception:
                log.exception("policy listener failed")

    async def set(self, policy: Policy, *, revision: int | None = None) -> int:
        """Store `policy` if the stored revision is still `revision` (default: this store's).
        Stamps `version` (one more than the replaced policy's) and `updated_at`; returns the
        new revision. Raises StalePolicy when someone else wrote first."""
        expected = self.revision if revision is None else revision
        base = self.current if expected == self.revision else await self._at(expected)
        stamped = msgspec.structs.replace(policy, version=base.version + 1, updated_at=time.time())
        try:
            if expected:
                new = await self._kv.update(KEY, encode(stamped), last=expected)
            else:
                new = await self._kv.create(KEY, encode(stamped))
        except KeyWrongLastSequenceError:
            raise StalePolicy(f"the policy changed since revision {expected}: read it again") from None
        await self._apply(encode(stamped), new)
        return int(new)

    async def _at(self, revision: int) -> Policy:
        try:
            entry = await self._kv.get(KEY, revision=revision)
        except KeyNotFoundError:
            return Policy()
        try:
            return decode(entry.value) if entry.value else Policy()
        except PolicyError:
            return Policy()

    async def history(self) -> list[tuple[int, Policy | None]]:
        """(revision, policy) oldest first; None for a deletion or an unreadable value."""
        try:
            entries = await self._kv.history(KEY)
        except NoKeysError:
            return []
        out: list[tuple[int, Policy | None]] = []
        for entry in entries:
            try:
                policy = decode(entry.value) if entry.value and entry.operation is None else None
            except PolicyError:
                policy = None
            out.append((entry.revision or 0, policy))
        return out
