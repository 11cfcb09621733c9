"""structlog set-up: JSON lines, or a readable console renderer on a TTY."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(service: str, *, region: str = "local", instance: str = "", level: str | None = None) -> None:
    level_name = (level or os.environ.get("FEDMCP_LOG_LEVEL", "info")).upper()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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
