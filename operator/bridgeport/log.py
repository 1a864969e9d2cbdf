"""structlog setup: JSON lines when not on a terminal (in the cluster), readable on a TTY.

The standard library's logging (kopf, kubernetes, pyroute2) is routed through the same
processors so every line has one format.
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup(level: str = "INFO", json: bool | None = None) -> None:
    as_json = not sys.stderr.isatty() if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf reports every handler call at INFO: thousands of lines per resync on a big cluster.
    for noisy in ("pyroute2", "asyncio", "urllib3", "kopf.objects", "kopf.activities"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _identity(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    return event
