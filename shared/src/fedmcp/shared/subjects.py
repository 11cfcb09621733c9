"""Every NATS subject of the fedmcp bus protocol, built from one configurable prefix.

A prefix lets several federations share one NATS account. Tokens that come
from users (server names, instance ids) are checked so that they can never
add subject levels or wildcards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "fedmcp"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(value: str, what: str) -> str:
    """Return `value` if it is usable as one subject token, else raise ValueError."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must match {_TOKEN.pattern}")
    return value


@dataclass(frozen=True)
class Subjects:
    """The subject space of one federation."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}")

    # -- data plane -------------------------------------------------------
    def rpc(self, server: str) -> str:
        """Requests for a backing server; its adapters share one queue group."""
        return f"{self.prefix}.rpc.{server}"

    def rpc_queue(self, server: str) -> str:
        """Queue group name of a server's adapters."""
        return f"{self.prefix}.adapter.{server}"

    def rpc_pinned(self, server: str, instance: str) -> str:
        """Requests for one adapter instance (session affinity)."""
        return f"{self.prefix}.rpc.{server}.{instance}"

    def reply(self, edge: str, token: str) -> str:
        """Reply stream of one request: accept, notifications, then the result."""
        return f"{self.prefix}.reply.{edge}.{token}"

    def reply_all(self, edge: str) -> str:
        """Wildcard an edge subscribes to once for all its reply streams."""
        return f"{self.prefix}.reply.{edge}.*"

    def cancel(self, server: str) -> str:
        """Cancels sent by edges to every adapter of a server; the payload names the call's reply subject."""
        return f"{self.prefix}.ctl.cancel.{server}"

    def ping(self, server: str, instance: str) -> str:
        """Is this adapter instance alive and still holding the call named in the payload? ("1"/"0")
        Names the server too, so that NATS permissions can keep each adapter to its own server's pings."""
        return f"{self.prefix}.ctl.ping.{server}.{instance}"

    def session_close(self, server: str, instance: str) -> str:
        """Ends the backing session an adapter instance holds for a front session (affinity = "session");
        the payload is the front session id. Answered `1` if the instance held it, `0` if not."""
        return f"{self.prefix}.ctl.close.{server}.{instance}"

    # -- control plane ----------------------------------------------------
    def announce(self, server: str, instance: str) -> str:
        """An adapter's full announcement (instance record and catalog)."""
        return f"{self.prefix}.evt.announce.{server}.{instance}"

    def announce_all(self) -> str:
        return f"{self.prefix}.evt.announce.*.*"

    def heartbeat(self, server: str, instance: str) -> str:
        return f"{self.prefix}.evt.heartbeat.{server}.{instance}"

    def heartbeat_all(self) -> str:
        return f"{self.prefix}.evt.heartbeat.*.*"

    def goodbye(self, server: str, instance: str) -> str:
        """An adapter leaving on purpose (drain), so it is removed at once."""
        return f"{self.prefix}.evt.goodbye.{server}.{instance}"

    def goodbye_all(self) -> str:
        return f"{self.prefix}.evt.goodbye.*.*"

    def resource_updated(self, server: str) -> str:
        """A subscribed resource of `server` changed; the payload is its URI. Every edge listens."""
        return f"{self.prefix}.evt.resource.{server}"

    def resource_updated_all(self) -> str:
        return f"{self.prefix}.evt.resource.*"

    def catalog_changed(self, server: str) -> str:
        """Published by the manager when a server's catalog changes."""
        return f"{self.prefix}.evt.catalog.{server}"

    def route_changed(self, server: str) -> str:
        """Published by the manager when a server's set of instances changes."""
        return f"{self.prefix}.evt.route.{server}"

    def reannounce(self, server: str) -> str:
        """Asks every adapter of a server to announce again (manager restart, unknown catalog)."""
        return f"{self.prefix}.ctl.reannounce.{server}"

    def reannounce_all(self) -> str:
        return f"{self.prefix}.ctl.reannounce.*"

    def consent_changed(self, region: str) -> str:
        """Consent grants or revocations just written to `region`'s grants bucket; the payload is the
        JSON list of the `Grant`s written. Every edge listens: a revocation takes effect at once."""
        return f"{self.prefix}.evt.consent.{check_token(region, 'region')}"

    def consent_changed_all(self) -> str:
        return f"{self.prefix}.evt.consent.*"

    # -- front sessions ---------------------------------------------------
    def feed(self, region: str, kind: str, name: str) -> str:
        """One event for the handshake-era GET streams of `region`'s sessions: `kind` "list" (`name`
        the list that changed) or "resource" (`name` the server; the payload is the URI). Every edge
        of the region publishes each event it sees; the feed stream keeps one copy (`Nats-Msg-Id`)."""
        return f"{self.prefix}.feed.{check_token(region, 'region')}.{check_token(kind, 'feed kind')}.{check_token(name, 'feed name')}"

    def feed_all(self, region: str) -> str:
        return f"{self.prefix}.feed.{check_token(region, 'region')}.>"

    def feed_stream(self, region: str) -> str:
        """The JetStream stream of a region's session feed, replayed for `Last-Event-ID`."""
        return f"{self.prefix.replace('.', '_')}_FEED_{check_token(region, 'region')}"

    # -- audit ------------------------------------------------------------
    def audit(self, region: str, kind: str) -> str:
        """One security decision of `kind` in `region`; the dots of a kind (`consent.granted`) are subject levels."""
        levels = ".".join(check_token(level, "audit kind") for level in kind.split("."))
        return f"{self.prefix}.audit.{check_token(region, 'region')}.{levels}"

    def audit_all(self, region: str) -> str:
        """Every audit event of a region: the subjects of its audit stream."""
        return f"{self.prefix}.audit.{check_token(region, 'region')}.>"

    def audit_stream(self, region: str) -> str:
        """The JetStream stream of a region's audit events (stream names may not contain dots)."""
        return f"{self.prefix.replace('.', '_')}_AUDIT_{check_token(region, 'region')}"

    # -- state ------------------------------------------------------------
    def bucket(self, name: str, region: str) -> str:
        """A region's own bucket `name`: each region keeps its control-plane state where it can
        read it during a partition (see buckets.py). KV bucket names may not contain dots."""
        return f"{self.prefix.replace('.', '_')}_{name}_{check_token(region, 'region')}"
