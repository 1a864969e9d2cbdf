"""What TCP and UDP listeners share: the bound socket, its target, warnings naming both."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy.listener_status import describe
from bridgeport.proxy.metrics import ListenerStats

log = structlog.get_logger(__name__)


class Listener:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, port: ProxyPort
    ) -> None:
        self.loop, self.sock, self.port = loop, sock, port
        self.where = describe(port.key)
        self.target: tuple[str, int] = (str(port.target), port.target_port)
        self.target_family = socket.AF_INET6 if port.target.version == 6 else socket.AF_INET

    def retarget(self, port: ProxyPort) -> None:
        """Same key, new target or owner: keep the bound socket, change where traffic goes."""
        self.port = port
        self.target = (str(port.target), port.target_port)
        self.target_family = socket.AF_INET6 if port.target.version == 6 else socket.AF_INET

    def snapshot(self) -> ListenerStats:
        """The listener's counters as of now."""
        raise NotImplementedError

    def warn(self, event: str, kind: str, suppressed: int = 0, **fields: Any) -> None:
        """Log a warning naming the publication, the listener and the target."""
        if suppressed:
            fields["suppressed"] = suppressed
        log.warning(
            event,
            publication=self.port.owner.key,
            listen=self.where,
            target=f"{self.target[0]}:{self.target[1]}",
            kind=kind,
            **fields,
        )

    def tick(self, now: float) -> None:
        """Periodic housekeeping (timeouts), called by the manager's sweeper."""

    def close(self) -> None:
        """Close the agent's socket and whatever the agent relays itself. For TCP the workers
        must have let go first (WorkerPool.unlisten): only then is the port free."""
        raise NotImplementedError
