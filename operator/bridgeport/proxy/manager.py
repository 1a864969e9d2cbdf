"""ProxyManager: makes exactly the desired listeners exist, from the agent's event loop.

Level-based like the rest of the agent: sync() gets the whole desired set every time, binds
what is missing (retrying earlier failures), retargets what changed and closes the rest.
TCP worker processes start with the first TCP listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterator, Sequence

import structlog
from prometheus_client import CollectorRegistry

from bridgeport.core.plan import ProxyKey, ProxyPort
from bridgeport.core.specs import Protocol
from bridgeport.proxy import wire
from bridgeport.proxy.listener import Listener
from bridgeport.proxy.sockets import open_listener
from bridgeport.proxy.stats import ListenerStats, ProxyCollector, Row
from bridgeport.proxy.status import ProxyStatus, bind_failure, describe
from bridgeport.proxy.tcp import TcpListener
from bridgeport.proxy.udp import UdpListener
from bridgeport.proxy.workers import WorkerPool, default_workers

log = structlog.get_logger(__name__)
_YIELD_EVERY = 100  # binds between yields, so 1,000 new ports never stall the loop


class ProxyManager:
    def __init__(self, *, registry: CollectorRegistry | None = None,
                 udp_idle_timeout: float = 90.0, max_udp_flows: int = 4096,
                 max_tcp_connections: int = 4096, connect_timeout: float = 5.0,
                 workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self.udp_idle_timeout = udp_idle_timeout
        self.max_udp_flows = max_udp_flows
        self.max_tcp_connections = max_tcp_connections
        self.connect_timeout = connect_timeout
        self.listeners: dict[ProxyKey, Listener] = {}
        self.failed: dict[ProxyKey, ProxyStatus] = {}
        self._pool: WorkerPool | None = None  # started with the first TCP listener
        self._udp_buf = bytearray(65536)  # the largest datagram
        self._sweeper: asyncio.TimerHandle | None = None
        self._registry = registry
        self._collector = ProxyCollector(self._rows, self._worker_counts)
        if registry is not None:
            registry.register(self._collector)

    async def sync(self, desired: Sequence[ProxyPort]) -> dict[ProxyKey, ProxyStatus]:
        """Converge on `desired`; bind failures become statuses, never exceptions."""
        loop = asyncio.get_running_loop()
        wanted: dict[ProxyKey, ProxyPort] = {}
        for port in desired:
            if wanted.setdefault(port.key, port) is not port:
                log.warning("duplicate proxy port ignored", listen=describe(port.key),
                            publication=port.owner.key, kept=wanted[port.key].owner.key)
        await self._close([k for k in self.listeners if k not in wanted])
        for key in [k for k in self.failed if k not in wanted]:
            del self.failed[key]
        statuses: dict[ProxyKey, ProxyStatus] = {}
        for i, (key, port) in enumerate(sorted(wanted.items())):
            if i and i % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            statuses[key] = self._ensure(loop, key, port)
        self._arm_sweeper(loop)
        return statuses

    def _ensure(self, loop: asyncio.AbstractEventLoop, key: ProxyKey,
                port: ProxyPort) -> ProxyStatus:
        current = self.listeners.get(key)
        if current is not None:
            if current.port != port:
                log.info("proxy retargeted", listen=describe(key), publication=port.owner.key,
                         target=f"{port.target}:{port.target_port}")
                current.retarget(port)
            return ProxyStatus("listening", port.owner)
        try:
            self.listeners[key] = self._listen(loop, port)
        except OSError as exc:
            status = bind_failure(key, port.owner, exc)
            if self.failed.get(key) != status:  # log changes, not every resync
                log.warning("proxy bind failed", listen=describe(key),
                            publication=port.owner.key, reason=status.reason,
                            message=status.message)
            self.failed[key] = status
            return status
        self.failed.pop(key, None)
        log.info("proxy listening", listen=describe(key), publication=port.owner.key,
                 target=f"{port.target}:{port.target_port}", why=port.why)
        return ProxyStatus("listening", port.owner)

    def _listen(self, loop: asyncio.AbstractEventLoop, port: ProxyPort) -> Listener:
        sock = open_listener(port.key)
        try:
            if port.protocol is Protocol.TCP:
                pool = self._tcp_workers()
                slot = pool.allocate()
                if slot is None:
                    raise OSError(errno.ENOSPC, "the proxy's TCP listener table is full")
                return TcpListener(loop, sock, port, pool, slot)
            return UdpListener(loop, sock, port, self.max_udp_flows, self.udp_idle_timeout,
                               self._udp_buf)
        except BaseException:
            sock.close()
            raise

    def _tcp_workers(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.workers, max_connections=self.max_tcp_connections,
                                    connect_timeout=self.connect_timeout,
                                    on_log=self._worker_log)
            log.info("proxy workers started", workers=self.workers)
        return self._pool

    def _worker_log(self, slot: int, message: wire.Log) -> None:
        for listener in self.listeners.values():
            if isinstance(listener, TcpListener) and listener.slot == slot:
                listener.worker_log(message)
                return
        if slot < 0:  # not about one listener (a listener's own lines die with it)
            log.error("proxy worker error", kind=message["kind"], error=message["error"])

    async def _close(self, keys: list[ProxyKey]) -> None:
        """Close listeners, the TCP ones' worker copies first, in one round trip."""
        closing = [self.listeners.pop(key) for key in keys]
        slots = [lst.slot for lst in closing if isinstance(lst, TcpListener)]
        if slots and self._pool is not None:
            await self._pool.unlisten(slots)
        for listener in closing:
            listener.close()
            log.info("proxy stopped", listen=describe(listener.port.key))

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer for every UDP listener's idle flows, instead of one per flow (TCP
        connect timeouts are the workers' own)."""
        if self._sweeper is None and self.listeners:
            interval = self.udp_idle_timeout / 4
            self._sweeper = loop.call_later(min(max(interval, 0.05), 5.0), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        for listener in list(self.listeners.values()):
            listener.tick(now)
        self._arm_sweeper(loop)

    def _rows(self) -> Iterator[Row]:
        # A copy: a scrape from another thread must not see the dicts change under it.
        for key, listener in list(self.listeners.items()):
            yield Row(key, listener.port.owner, True, listener.snapshot())
        for key, status in list(self.failed.items()):
            yield Row(key, status.owner, False, ListenerStats())

    def _worker_counts(self) -> tuple[int, int]:
        pool = self._pool
        return (pool.live_workers(), pool.restarts) if pool is not None else (0, 0)

    async def close(self) -> None:
        """Close every listener and live connection, stop the workers, unregister metrics."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._close(list(self.listeners))
        self.failed.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._registry is not None:
            with contextlib.suppress(KeyError):
                self._registry.unregister(self._collector)
            self._registry = None
