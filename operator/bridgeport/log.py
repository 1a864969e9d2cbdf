"""structlog setup: JSON lines when not on a terminal (in the cluster), readable on a TTY.

The standard library's logging (kopf, kubernetes, pyroute2) is routed through the same
processors so every line has one format. Those libraries log at their own level
(`library_level`, WARNING by default), not ours: pyroute2 at DEBUG prints every netlink message.
"""

from __future__ import annotations

import logging
import sys

import structlog

# Chatty at INFO or DEBUG: kopf reports every handler call, pyroute2 every netlink message.
LIBRARIES = ("pyroute2", "asyncio", "urllib3", "kubernetes", "kopf.objects", "kopf.activities")


class Levels(logging.Filter):
    """Library records need `library` level, everyone else's `ours`. A filter on our handler,
    not logger levels, because pyroute2 resets its logger's level when it is imported (after
    this setup has run)."""

    def __init__(self, ours: int, library: int) -> None:
        super().__init__()
        self.ours, self.library = ours, library

    def filter(self, record: logging.LogRecord) -> bool:
        lib = any(record.name == n or record.name.startswith(n + ".") for n in LIBRARIES)
        return record.levelno >= (self.library if lib else self.ours)


def _level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {name!r}")
    return level


def setup(level: str = "INFO", json: bool | None = None, library_level: str = "WARNING") -> None:
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
        # filter_by_level first: a debug event at INFO is dropped before the other processors
        # run (thousands of per-port debug lines in one reconcile would otherwise cost the
        # event loop tens of ms). Not in `shared`: foreign records come with no logger.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if as_json else _identity,
                renderer,
            ],
        )
    )
    ours, library = _level(level), _level(library_level)
    handler.addFilter(Levels(ours, library))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(ours, library))
    for lib in LIBRARIES:  # spare them building records nobody prints (where they keep it)
        logging.getLogger(lib).setLevel(library)


def _identity(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    return event
