"""The federation's routing table: merged catalogs with collision-free names.

A pure function of the catalogs bucket, so every edge (and `fedmcp ls`, and
the manager that reports conflicts) computes the very same table without
coordinating.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedmcp.shared.envelopes import JSON, CatalogEntry, Freshness, combine
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

NAME_MAX = 64
_INVALID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Route:
    server: str
    name: str
    """The item's name (or URI) on its backing server."""


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]


def exposed_name(prefix: str, name: str) -> str:
    """`<prefix>_<name>` made to fit `^[A-Za-z0-9_-]{1,64}$`, which every mainstream client accepts."""
    raw = f"{prefix}_{name}" if prefix else name
    clean = _INVALID.sub("_", raw)
    if clean != raw or len(clean) > NAME_MAX:
        # Sanitising can merge two names; the hash of the original keeps them apart.
        clean = f"{clean[: NAME_MAX - 9]}_{_short_hash(raw)}"
    return clean


@dataclass
class RoutingTable:
    tools: dict[str, Route] = field(default_factory=dict)
    prompts: dict[str, Route] = field(default_factory=dict)
    resources: dict[str, Route] = field(default_factory=dict)
    templates: list[tuple[UriTemplate, Route]] = field(default_factory=list)
    tool_list: list[JSON] = field(default_factory=list)
    tool_by_name: dict[str, JSON] = field(default_factory=dict)
    prompt_list: list[JSON] = field(default_factory=list)
    resource_list: list[JSON] = field(default_factory=list)
    template_list: list[JSON] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    servers: dict[str, CatalogEntry] = field(default_factory=dict)
    cache: dict[str, Freshness] = field(default_factory=dict)
    """Per merged list: the combined hints of every server that contributes to it."""
    version: str = ""
    """Changes whenever any catalog changes; binds pagination cursors."""
    unprefixed: str | None = None
    """The one server exposed without a prefix, if exactly one is: it owns the bare namespace, so
    a tool or prompt name no catalog lists is passed to it (a transparent proxy for servers that
    serve names they do not list)."""

    def tool_route(self, name: str) -> Route | None:
        route = self.tools.get(name)
        if route is None and self.unprefixed is not None:
            return Route(self.unprefixed, name)
        return route

    def prompt_route(self, name: str) -> Route | None:
        route = self.prompts.get(name)
        if route is None and self.unprefixed is not None:
            return Route(self.unprefixed, name)
        return route

    def route_uri(self, uri: str) -> Route | None:
        route = self.resources.get(uri)
        if route is not None:
            return route
        for template, troute in self.templates:
            if template.match(uri) is not None:
                return Route(troute.server, uri)
        return None

    def route_template(self, uri_template: str) -> Route | None:
        for template, route in self.templates:
            if str(template) == uri_template:
                return route
        return None

    def has_capability(self, name: str) -> bool:
        return any(name in entry.catalog.capabilities for entry in self.servers.values())


def _claim(
    table: dict[str, Route], key: str, route: Route, kind: str, conflicts: list[str], rename: bool
) -> str | None:
    """Claim `key` for `route`; on a clash rename (names) or refuse (URIs), and record it."""
    holder = table.get(key)
    if holder is None:
        table[key] = route
        return key
    if not rename:
        conflicts.append(f"{kind} {key!r} of server {route.server!r} is shadowed by server {holder.server!r}")
        return None
    new_key = f"{key[: NAME_MAX - 9]}_{_short_hash(route.server, route.name)}"
    conflicts.append(
        f"{kind} {key!r} of server {route.server!r} clashes with server {holder.server!r}; exposed as {new_key!r}"
    )
    table[new_key] = route
    return new_key


def _renamed(item: JSON, key: str, value: str) -> JSON:
    if item.get(key) == value:
        return item
    copy: dict[str, Any] = dict(item)
    copy[key] = value
    return copy


def build(entries: Mapping[str, CatalogEntry]) -> RoutingTable:
    t = RoutingTable()
    for server in sorted(entries):
        entry = entries[server]
        t.servers[server] = entry
        cat = entry.catalog
        prefix = server if entry.settings.prefix is None else entry.settings.prefix
        for tool in cat.tools:
            name = str(tool.get("name", ""))
            key = _claim(t.tools, exposed_name(prefix, name), Route(server, name), "tool", t.conflicts, True)
            if key is not None:
                t.tool_list.append(exposed := _renamed(tool, "name", key))
                t.tool_by_name[key] = exposed
        for prompt in cat.prompts:
            name = str(prompt.get("name", ""))
            key = _claim(t.prompts, exposed_name(prefix, name), Route(server, name), "prompt", t.conflicts, True)
            if key is not None:
                t.prompt_list.append(_renamed(prompt, "name", key))
        for resource in cat.resources:
            uri = str(resource.get("uri", ""))
            if _claim(t.resources, uri, Route(server, uri), "resource", t.conflicts, False) is not None:
                t.resource_list.append(resource)
        for tmpl in cat.resource_templates:
            raw = str(tmpl.get("uriTemplate", ""))
            try:
                parsed = UriTemplate.parse(raw)
            except InvalidUriTemplate:
                t.conflicts.append(f"resource template {raw!r} of server {server!r} is not a valid RFC 6570 template")
                continue
            clash = next((r for tpl, r in t.templates if str(tpl) == raw), None)
            if clash is not None:
                t.conflicts.append(
                    f"resource template {raw!r} of server {server!r} is shadowed by server {clash.server!r}"
                )
                continue
            t.templates.append((parsed, Route(server, raw)))
            t.template_list.append(tmpl)
    for server_entry in t.servers.values():
        cat = server_entry.catalog
        for key, items in (
            ("tools", cat.tools),
            ("prompts", cat.prompts),
            ("resources", cat.resources),
            ("resourceTemplates", cat.resource_templates),
        ):
            if items:
                t.cache[key] = combine(t.cache.get(key), cat.cache.get(key, Freshness()))
    bare = [server for server, entry in sorted(entries.items()) if entry.settings.prefix == ""]
    t.unprefixed = bare[0] if len(bare) == 1 else None
    t.version = _short_hash(*(f"{s}:{e.digest}:{e.settings.prefix}" for s, e in sorted(entries.items())))
    return t
