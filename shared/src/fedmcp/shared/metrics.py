"""Every Prometheus metric fedmcp exposes, defined once (names follow the MCP semantic conventions where
they exist: `mcp.server.operation.duration` -> `mcp_server_operation_duration_seconds`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- edge -------------------------------------------------------------------------
SERVER_DURATION = Histogram(
    "mcp_server_operation_duration_seconds",
    "MCP requests served by the edge, from arrival to answer.",
    ["server", "method", "tool", "outcome"],
    buckets=_BUCKETS,
)
EDGE_INFLIGHT = Gauge("fedmcp_edge_inflight_requests", "Requests the edge is serving now.")
RETRIES = Counter(
    "fedmcp_edge_retries_total",
    "Requests the edge sent again: reason 'not accepted', 'busy', 'no responders' or 'failover' (instance lost).",
    ["server", "reason"],
)

CONSENT_DECISIONS = Counter(
    "fedmcp_consent_decisions_total", "Consent answers at the edge: granted or declined.", ["server", "decision"]
)
AUTH_DENIED = Counter(
    "fedmcp_auth_denied_total",
    "Requests refused at the edge or an adapter, by status or reason.",
    ["service", "reason"],
)

# -- adapter ----------------------------------------------------------------------
CLIENT_DURATION = Histogram(
    "mcp_client_operation_duration_seconds",
    "Requests an adapter sent to its backing server, until the answer.",
    ["server", "method", "outcome"],
    buckets=_BUCKETS,
)
ADAPTER_INFLIGHT = Gauge("fedmcp_adapter_inflight_requests", "Requests an adapter is serving now.", ["server"])
BACKING_RESTARTS = Counter("fedmcp_backing_restarts_total", "Restarts of a backing server session.", ["server"])
POOL_SIZE = Gauge("fedmcp_adapter_pool_size", "Open sessions to the backing server.", ["server"])
PINNED_SESSIONS = Gauge(
    "fedmcp_adapter_pinned_sessions",
    'Backing sessions held for one front session each (affinity = "session"), opening ones included.',
    ["server"],
)

# -- manager ----------------------------------------------------------------------
REGISTRY_INSTANCES = Gauge("fedmcp_registry_instances", "Adapter instances in the registry.", ["server"])
EVICTIONS = Counter("fedmcp_registry_evictions_total", "Instances removed for missed heartbeats.", ["server"])

# -- audit (any service that records security decisions) ---------------------------
AUDIT_FAILURES = Counter(
    "fedmcp_audit_failures_total",
    "Audit events that were not stored: reason 'backlog' (too many awaiting their ack), 'publish' "
    "(the NATS client refused it), 'rejected' (JetStream answered an error, or no stream), "
    "'timeout' (no ack in time) or 'invalid' (not an audit event).",
    ["reason"],
)

# -- every service ----------------------------------------------------------------
BUS_ERRORS = Counter("fedmcp_bus_errors_total", "Errors reported by the NATS client.", ["service"])
BUS_RECONNECTS = Counter("fedmcp_bus_reconnects_total", "Reconnections of the NATS client.", ["service"])


def outcome(error_code: int | None) -> str:
    """`ok`, or the JSON-RPC error code as a string (MCP semconv `error.type`)."""
    return "ok" if error_code is None else str(error_code)


@lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: the per-call paths look the same few children up each time."""
    return metric.labels(*values)


_counted: dict[int, list[weakref.WeakMethod[Callable[[], int]]]] = {}


def count_from(gauge: Any, read: Callable[[], int]) -> None:
    """`gauge` (a child, or an unlabelled gauge) reads its value at scrape time: the sum of every live
    `read` (a bound method) registered for it. An in-flight count kept as a plain int this way costs
    the per-call paths nothing, where `inc()`/`dec()` take a lock twice per call."""
    reads = _counted.get(id(gauge))
    if reads is None:
        reads = _counted[id(gauge)] = []

        def total() -> float:
            live = [(ref, method) for ref in reads if (method := ref()) is not None]
            reads[:] = [ref for ref, _ in live]
            return float(sum(method() for _, method in live))

        gauge.set_function(total)
    reads.append(weakref.WeakMethod(read))
