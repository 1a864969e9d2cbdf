"""What TCP and UDP listeners share: identity, counters, throttled warnings."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy.stats import ListenerStats, Throttle
from bridgeport.proxy.status import describe

log = structlog.get_logger(__name__)


class Listener:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 port: ProxyPort) -> None:
        self.loop, self.sock, self.port = loop, sock, port
        self.stats = ListenerStats()
        self.throttle = Throttle()
        self.where = describe(port.key)
        self.target: tuple[str, int] = (str(port.target), port.target_port)
        self.target_family = socket.AF_INET6 if port.target.version == 6 else socket.AF_INET

    def retarget(self, port: ProxyPort) -> None:
        """Same key, new target or owner: keep the bound socket, change where traffic goes."""
        self.port = port
        self.target = (str(port.target), port.target_port)
        self.target_family = socket.AF_INET6 if port.target.version == 6 else socket.AF_INET

    def error(self, kind: str, event: str, **fields: Any) -> None:
        """Count an error and log it (throttled per kind), naming the publication."""
        self.stats.errors[kind] += 1
        suppressed = self.throttle.allow(kind)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log.warning(event, publication=self.port.owner.key, listen=self.where,
                    target=f"{self.target[0]}:{self.target[1]}", kind=kind, **fields)

    def tick(self, now: float) -> None:
        """Periodic housekeeping (timeouts), called by the manager's sweeper."""

    def close(self) -> None:
        raise NotImplementedError
