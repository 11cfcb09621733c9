"""structlog set-up: JSON lines, or a readable console renderer on a TTY."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from opentelemetry import trace


def add_trace_ids(logger: object, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Every log line inside a span names its trace and span, so logs join traces in Jaeger."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def configure(service: str, *, region: str = "local", instance: str = "", level: str | None = None) -> None:
    level_name = (level or os.environ.get("FEDMCP_LOG_LEVEL", "info")).upper()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level_name]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, region=region, instance=instance)
    # The SDK and libraries log through stdlib logging; keep their noise at warning.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
