"""TCP listener, the agent's side: owns the bound socket; the workers relay (pool.py).

Relay choice (the figures, prototypes and runs are in bench/proxy/README.md): splice(2) moves
bulk streams without copying them through Python (small exchanges are copied: fewer syscalls
than a pipe round trip); an edge-triggered epoll loop of our own registers
each socket once, where uvloop's handles make several epoll_ctl calls per connection; worker
processes sharing the listening sockets use the cores one interpreter cannot (threads would
share its lock).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy import wire
from bridgeport.proxy.listener import Listener
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

_EVENTS = {
    "accept": "proxy accept failed",
    "connection_limit": "proxy connection limit reached, refusing",
    "internal": "proxy relay internal error (the connection was reset)",
}


class TcpListener(Listener):
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
            _EVENTS.get(kind, "proxy cannot connect to the target"),
            kind,
            message["suppressed"],
            error=message["error"],
        )

    def retarget(self, port: ProxyPort) -> None:
        super().retarget(port)
        self.pool.retarget(self.slot, self.target)

    def close(self) -> None:
        self.sock.close()
