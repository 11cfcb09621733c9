"""JetStream KV buckets of the federation, created idempotently by any service."""

from __future__ import annotations

import anyio
from fedmcp.shared.subjects import Subjects
from nats.errors import NoRespondersError, TimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

REGISTRY = "registry"
"""key `<server>.<instance>` -> `Instance`; written by the manager only."""
LEASES = "leases"
"""key `manager` -> the lease of the manager that writes the registry and catalogs buckets."""
CATALOGS = "catalogs"
"""key `<server>` -> `CatalogEntry`; written by the manager only, watched by edges."""


async def open_bucket(
    js: JetStreamContext, subjects: Subjects, name: str, *, history: int = 1, patience: float = 30.0
) -> KeyValue:
    """Bind to a bucket, creating it if needed. A cluster that is still electing its JetStream
    leader answers "no responders" for a few seconds: keep trying for `patience` seconds."""
    bucket = subjects.bucket(name)
    deadline = anyio.current_time() + patience
    while True:
        try:
            try:
                return await js.key_value(bucket)
            except BucketNotFoundError:
                # Two services racing here both succeed: an identical config is accepted.
                return await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, direct=True))
        except (NoRespondersError, TimeoutError, ServiceUnavailableError):
            if anyio.current_time() > deadline:
                raise
            await anyio.sleep(0.25)
