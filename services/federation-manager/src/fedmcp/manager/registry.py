"""The registry: adapter instances and server catalogs, kept in JetStream KV.

Adapters announce themselves and heartbeat; the manager turns that into two
buckets (see fedmcp.shared.buckets) and evicts instances that fall silent.
Edges read the catalogs bucket directly, so the manager is never on the
request path and known routes keep working while it is down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from fedmcp.shared import buckets, envelopes, headers, metrics, routing
from fedmcp.shared.envelopes import Announce, CatalogEntry, Heartbeat, Instance
from fedmcp.shared.subjects import Subjects
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger("fedmcp.manager.registry")

GOODBYE_MEMORY = 60.0
"""Seconds a goodbye is remembered: longer than an adapter takes to shut down after it."""


@dataclass
class Registry:
    nc: NATS
    subjects: Subjects
    instances_kv: KeyValue
    catalogs_kv: KeyValue
    evict_after: float = 6.0
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    catalogs: dict[str, CatalogEntry] = field(default_factory=dict)
    _seen: dict[tuple[str, str], float] = field(default_factory=dict)
    _conflicts: list[str] = field(default_factory=list)
    _loaded_at: float = field(default_factory=time.monotonic)
    _empty_since: dict[str, float] = field(default_factory=dict)
    _departed: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """Instances that said goodbye: their start time, and when they said it (see `_gone`)."""
    leader: bool = True
    """Only the leader writes the buckets and publishes; a follower keeps the same view in memory
    so it can take over at once (see lease.py)."""

    async def _put(self, kv: KeyValue, key: str, value: bytes) -> None:
        if self.leader:
            await kv.put(key, value)

    async def _delete(self, kv: KeyValue, key: str) -> None:
        if self.leader:
            await kv.delete(key)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        if self.leader:
            await self.nc.publish(subject, payload, headers=headers)

    async def lead(self) -> None:
        """Take over writing. What this manager learnt as a follower was never written (a catalog
        that has not changed since is not written again), so write it all now; then ask every
        adapter to announce, so the buckets match what is running."""
        self.leader = True
        # Snapshots: announces and heartbeats are handled while these writes wait.
        for server, entry in list(self.catalogs.items()):
            await self._put(self.catalogs_kv, server, envelopes.encode(entry))
        for inst in list(self.instances.values()):
            await self._put(self.instances_kv, self._key(inst), envelopes.encode(inst))
        for server in {s for s, _ in self.instances} | set(self.catalogs):
            await self._publish(self.subjects.reannounce(server), b"", headers.base())

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=5)

    @staticmethod
    def _key(instance: Instance) -> str:
        return f"{instance.server}.{instance.instance}"

    async def load(self) -> None:
        """Pick up where a previous manager left off; every loaded instance gets a fresh grace period."""
        now = self._loaded_at = time.monotonic()
        for key, value in (await buckets.read_all(self.js, self.catalogs_kv)).items():
            self.catalogs[key] = envelopes.decode(value, CatalogEntry)
        for value in (await buckets.read_all(self.js, self.instances_kv)).values():
            inst = envelopes.decode(value, Instance)
            self.instances[(inst.server, inst.instance)] = inst
            self._seen[(inst.server, inst.instance)] = now
        for server in {s for s, _ in self.instances} | set(self.catalogs):
            await self._publish(self.subjects.reannounce(server), b"", headers=headers.base())

    async def on_announce(self, msg: Msg) -> None:
        if not headers.speaks_our_protocol(msg.headers):
            log.warning("ignored announce in another bus protocol version", subject=msg.subject)
            return
        announce = envelopes.decode(msg.data, Announce)
        if self._gone(announce.instance):
            return
        await self._upsert(announce.instance)
        if announce.catalog is not None:
            await self._set_catalog(announce)

    async def on_heartbeat(self, msg: Msg) -> None:
        if not headers.speaks_our_protocol(msg.headers):
            return
        inst = envelopes.decode(msg.data, Heartbeat).instance
        if self._gone(inst):
            return
        known = self.catalogs.get(inst.server)
        if (inst.server, inst.instance) not in self.instances or (
            inst.catalog_digest and (known is None or known.digest != inst.catalog_digest)
        ):
            # A manager that restarted, or a catalog it missed: ask for the full story.
            await self._publish(self.subjects.reannounce(inst.server), b"", headers=headers.base())
        await self._upsert(inst)

    async def on_goodbye(self, msg: Msg) -> None:
        if not headers.speaks_our_protocol(msg.headers):
            return
        inst = envelopes.decode(msg.data, Heartbeat).instance
        self._departed[(inst.server, inst.instance)] = (inst.started_at, time.monotonic())
        await self._remove(inst.server, inst.instance, reason="goodbye")

    def _gone(self, inst: Instance) -> bool:
        """Did it say goodbye? Its heartbeats may still come: sent just before the goodbye (each subject
        has its own subscription, so one may be handled after the goodbye) or while it shuts down.
        They must not bring it back (a new start under the same id may)."""
        departed = self._departed.get((inst.server, inst.instance))
        return departed is not None and inst.started_at <= departed[0]

    async def _upsert(self, inst: Instance) -> None:
        key = (inst.server, inst.instance)
        is_new = key not in self.instances
        self.instances[key] = inst
        self._seen[key] = time.monotonic()
        self._empty_since.pop(inst.server, None)
        await self._put(self.instances_kv, self._key(inst), envelopes.encode(inst))
        if is_new:
            metrics.REGISTRY_INSTANCES.labels(inst.server).set(len(self._instance_ids(inst.server)))
            log.info("instance joined", server=inst.server, instance=inst.instance, region=inst.region)
            await self._routes_changed(inst.server)

    async def _set_catalog(self, announce: Announce) -> None:
        assert announce.catalog is not None
        inst = announce.instance
        digest = announce.catalog.digest()
        current = self.catalogs.get(inst.server)
        if current is not None and current.digest == digest and current.settings == inst.settings:
            return
        self.catalogs[inst.server] = CatalogEntry(
            catalog=announce.catalog, digest=digest, settings=inst.settings, instances=self._instance_ids(inst.server)
        )
        await self._put(self.catalogs_kv, inst.server, envelopes.encode(self.catalogs[inst.server]))
        await self._publish(self.subjects.catalog_changed(inst.server), digest.encode(), headers=headers.base())
        log.info("catalog changed", server=inst.server, digest=digest, tools=len(announce.catalog.tools))
        self._report_conflicts()

    def _instance_ids(self, server: str) -> list[str]:
        return sorted(i for s, i in self.instances if s == server)

    async def _routes_changed(self, server: str) -> None:
        """The server's set of instances changed: its catalog entry says who serves it, so edges see
        the instances in their routing table (the catalog itself, and so every list, is unchanged)."""
        instances = self._instance_ids(server)
        entry = self.catalogs.get(server)
        if entry is not None and entry.instances != instances:
            entry.instances = instances
            await self._put(self.catalogs_kv, server, envelopes.encode(entry))
        await self._publish(self.subjects.route_changed(server), envelopes.encode(instances), headers=headers.base())

    async def _remove(self, server: str, instance: str, *, reason: str) -> None:
        if self.instances.pop((server, instance), None) is None:
            return
        self._seen.pop((server, instance), None)
        await self._delete(self.instances_kv, f"{server}.{instance}")
        metrics.REGISTRY_INSTANCES.labels(server).set(len(self._instance_ids(server)))
        if reason == "missed heartbeats":
            metrics.EVICTIONS.labels(server).inc()
        log.info("instance left", server=server, instance=instance, reason=reason)
        await self._routes_changed(server)
        if not self._instance_ids(server):
            # Not dropped at once: a restarting single replica would make its tools blink
            # out of every client's list. Dropped by evict_silent if nobody comes back.
            self._empty_since.setdefault(server, time.monotonic())

    async def _drop_catalog(self, server: str) -> None:
        """The last instance is gone: the server leaves the federation's catalog."""
        del self.catalogs[server]
        await self._delete(self.catalogs_kv, server)
        await self._publish(self.subjects.catalog_changed(server), b"", headers=headers.base())
        log.info("server left the federation", server=server)
        self._report_conflicts()

    async def evict_silent(self) -> None:
        cutoff = time.monotonic() - self.evict_after
        for key, (_, when) in list(self._departed.items()):
            if when < time.monotonic() - GOODBYE_MEMORY:
                del self._departed[key]
        for (server, instance), seen in list(self._seen.items()):
            if seen < cutoff:
                await self._remove(server, instance, reason="missed heartbeats")
        # A server whose last instance left (or, loaded from KV, never came back) leaves the
        # catalog once the grace period has passed without an instance returning.
        now = time.monotonic()
        for server in [s for s in self.catalogs if not self._instance_ids(s)]:
            since = self._empty_since.setdefault(server, self._loaded_at)
            if now - since > self.evict_after:
                self._empty_since.pop(server, None)
                await self._drop_catalog(server)

    def _report_conflicts(self) -> None:
        conflicts = routing.build(self.catalogs).conflicts
        for conflict in conflicts:
            if conflict not in self._conflicts:
                log.warning("catalog conflict", detail=conflict)
        self._conflicts = conflicts
