"""JetStream KV buckets of the federation, created idempotently by any service."""

from __future__ import annotations

from fedmcp.shared.subjects import Subjects
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

REGISTRY = "registry"
"""key `<server>.<instance>` -> `Instance`; written by the manager only."""
LEASES = "leases"
"""key `manager` -> the lease of the manager that writes the registry and catalogs buckets."""
CATALOGS = "catalogs"
"""key `<server>` -> `CatalogEntry`; written by the manager only, watched by edges."""


async def open_bucket(js: JetStreamContext, subjects: Subjects, name: str, *, history: int = 1) -> KeyValue:
    bucket = subjects.bucket(name)
    try:
        return await js.key_value(bucket)
    except Exception:
        # Not there yet: create it. Two services racing here both succeed because
        # an identical config is accepted by the server.
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, direct=True))
