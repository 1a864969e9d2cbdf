"""What TCP and UDP listeners share: the bound socket, its target, warnings naming both, and
the agent's side of a listener the workers relay (pool.py): counters from shared memory,
the workers' error reports as warnings."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any, ClassVar

import structlog

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy import wire
from bridgeport.proxy.listener_status import describe
from bridgeport.proxy.metrics import ListenerStats
from bridgeport.proxy.pool import WorkerPool
from bridgeport.proxy.shared_counters import (
    ACTIVE,
    BYTES_IN,
    BYTES_OUT,
    CONNECTIONS,
    ERROR_KINDS,
    FIRST_ERROR,
)

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

    def close(self) -> None:
        """Close the agent's socket. The workers must have let go first (WorkerPool.unlisten):
        only then is the port free."""
        self.sock.close()


class PooledListener(Listener):
    """A listener the workers relay: the agent binds it, hands it over, reads its counters."""

    EVENTS: ClassVar[dict[str, str]] = {}  # a worker's error kind -> the warning's event
    DEFAULT_EVENT = "proxy relay error"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        port: ProxyPort,
        pool: WorkerPool,
        slot: int,
    ) -> None:
        super().__init__(loop, sock, port)
        self.pool, self.slot = pool, slot
        pool.listen(slot, sock, self.target)

    def snapshot(self) -> ListenerStats:
        """Summed over the workers from shared memory: current at every read."""
        cells = self.pool.totals(self.slot)
        stats = ListenerStats()
        stats.connections, stats.active = cells[CONNECTIONS], cells[ACTIVE]
        stats.bytes_in, stats.bytes_out = cells[BYTES_IN], cells[BYTES_OUT]
        errors = zip(ERROR_KINDS, cells[FIRST_ERROR:], strict=True)
        stats.errors = Counter({kind: n for kind, n in errors if n})
        return stats

    def worker_log(self, message: wire.Log) -> None:
        """A worker's error report (counted and throttled there)."""
        kind = message["kind"]
        self.warn(
            self.EVENTS.get(kind, self.DEFAULT_EVENT),
            kind,
            message["suppressed"],
            error=message["error"],
        )

    def retarget(self, port: ProxyPort) -> None:
        super().retarget(port)
        self.pool.retarget(self.slot, self.target)
