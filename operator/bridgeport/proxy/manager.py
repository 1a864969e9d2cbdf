"""ProxyManager: makes exactly the desired listeners and port claims exist, from the agent's
event loop.

Level-based like the rest of the agent: sync() gets the whole desired set every time, binds
what is missing (retrying earlier failures), retargets what changed and closes the rest; told
how the set changed since the last sync, it does so in O(change).
Claims are bound, non-listening sockets that keep a DNATed address:port from anyone else
(core/claims.py). The agent binds before it programs and releases after (sync(release=False),
then release()), so no rule of ours ever captures a port that we do not hold.
The worker processes that relay TCP and UDP start with the first listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry

from bridgeport.core.plan import Claim, ProxyKey, ProxyPort
from bridgeport.core.sockets import SocketChanges, SocketReports
from bridgeport.core.specs import Protocol, ResourceRef
from bridgeport.proxy import wire
from bridgeport.proxy.holders import describe_holder
from bridgeport.proxy.listener import Listener, PooledListener
from bridgeport.proxy.listener_status import ProxyStatus, bind_failure, describe
from bridgeport.proxy.metrics import ListenerStats, ProxyCollector, Row
from bridgeport.proxy.pool import WorkerPool, default_workers
from bridgeport.proxy.sockets import family_of, is_wildcard, open_claim, open_listener
from bridgeport.proxy.tcp import TcpListener
from bridgeport.proxy.udp import UdpListener

log = structlog.get_logger(__name__)
_T = TypeVar("_T")
_S = TypeVar("_S", ProxyPort, Claim)
_YIELD_EVERY = 100  # binds between yields, so 1,000 new ports never stall the loop


@dataclass(frozen=True)
class Fairness:
    """Per-client bounds, so one client cannot take a listener from the others (0: off).
    A source is a client address; every local process is one source (127.0.0.1 / ::1)."""

    tcp_per_source: int = 1024  # live TCP connections per listener and source address
    tcp_idle_timeout: float = 3600.0  # seconds without a byte either way, then reset
    udp_flows_per_source: int = 1024  # UDP flows per listener and source; the oldest goes


class ProxyManager:
    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        udp_idle_timeout: float = 90.0,
        max_udp_flows: int = 4096,
        max_tcp_connections: int = 4096,
        connect_timeout: float = 5.0,
        workers: int | None = None,
        fairness: Fairness | None = None,
    ) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self.udp_idle_timeout = udp_idle_timeout
        self.max_udp_flows = max_udp_flows
        self.max_tcp_connections = max_tcp_connections
        self.connect_timeout = connect_timeout
        self.fairness = fairness or Fairness()
        self.listeners: dict[ProxyKey, Listener] = {}
        self.failed: dict[ProxyKey, ProxyStatus] = {}
        self.held: dict[ProxyKey, tuple[socket.socket | None, ResourceRef]] = {}
        # What the last sync wanted: a listener per address, a claim per address (a listener
        # there holds it instead), the addresses named twice (the first one won).
        self._wanted: dict[ProxyKey, ProxyPort] = {}
        self._claimed: dict[ProxyKey, Claim] = {}
        self._twice: set[ProxyKey] = set()
        self._stale: set[ProxyKey] = set()  # maybe bound, no longer wanted: for release()
        self._statuses: dict[ProxyKey, ProxyStatus] = {}  # every wanted key's last status
        self._served: dict[ProxyKey, ProxyStatus] = {}  # the listeners' of them
        self._pool: WorkerPool | None = None  # started with the first listener
        self._registry = registry
        self._collector = ProxyCollector(self._rows, self._worker_counts)
        if registry is not None:
            registry.register(self._collector)

    async def sync(
        self,
        desired: Sequence[ProxyPort],
        claims: Sequence[Claim] = (),
        release: bool = True,
        changes: SocketChanges | None = None,
    ) -> SocketReports[ProxyStatus]:
        """Converge on `desired` listeners and `claims`; bind failures become statuses, never
        exceptions. With release=False what is no longer wanted stays bound until release().

        `changes`, when given, says how `desired` and `claims` differ from the last sync's
        (the caller vouches for it): then only the sockets it names, and the failed ones, are
        looked at, O(change). Without it, or when it does not fit what the manager wants now
        (an address named twice: the order of the whole list decides), every socket is."""
        loop = asyncio.get_running_loop()
        changed = None if changes is None else self._change(changes)
        # After a change, the failures are retried too, as a whole sync would: the port may
        # be free now.
        keys = (
            self._want(desired, claims) if changed is None else sorted(changed | self.failed.keys())
        )
        for key in [k for k in self.failed if not self._wants(k)]:
            del self.failed[key]
        if release:
            await self.release()
        binds = 0
        for key in sorted(k for k in keys if k in self._wanted):
            if key not in self.listeners:
                binds += 1
                if binds % _YIELD_EVERY == 0:  # 1,000 new ports never stall the loop
                    await asyncio.sleep(0)
            self._report(key, await self._ensure(loop, key, self._wanted[key]))
        for key in keys:  # the plan's order (the delta's: sorted as the plan sorts them)
            claim = self._claimed.get(key)
            if claim is None or key in self._wanted:
                if not self._wants(key):
                    self._statuses.pop(key, None)
                    self._served.pop(key, None)
                continue
            held = self.held.get(key)
            if held is not None:  # steady state: no coroutine, no syscall
                if held[1] != claim.owner:
                    self.held[key] = (held[0], claim.owner)
                before = self._statuses.get(key)
                if before is None or before.state != "listening" or before.owner != claim.owner:
                    self._report(key, ProxyStatus("listening", claim.owner))
                continue
            binds += 1
            if binds % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            self._report(key, await self._hold(key, claim))
        # The failures in the order of a whole sync: listeners, then claims, each by address.
        failed = sorted(self.failed.items(), key=lambda f: (f[0] not in self._wanted, f[0]))
        return SocketReports(dict(self._statuses), dict(failed), dict(self._served))

    def _want(self, desired: Sequence[ProxyPort], claims: Sequence[Claim]) -> list[ProxyKey]:
        """Want exactly these (the first of each address wins); every wanted key, claims in
        their order. O(sockets)."""
        wanted: dict[ProxyKey, ProxyPort] = {}
        twice: set[ProxyKey] = set()
        for port in desired:
            if wanted.setdefault(port.key, port) is not port:
                twice.add(port.key)
                log.warning(
                    "duplicate proxy port ignored",
                    listen=describe(port.key),
                    publication=port.owner.key,
                    kept=wanted[port.key].owner.key,
                )
        claimed: dict[ProxyKey, Claim] = {}
        for claim in claims:
            if claimed.setdefault(claim.key, claim) is not claim:
                twice.add(claim.key)
        self._wanted, self._claimed, self._twice = wanted, claimed, twice
        # Bound and no longer wanted as what they are: release() lets them go.
        self._stale = {k for k in self.listeners if k not in wanted}
        self._stale |= {k for k in self.held if k not in claimed or k in wanted}
        # The reports start afresh: every wanted key is reported below.
        self._statuses, self._served = {}, {}
        return [*wanted, *(k for k in claimed if k not in wanted)]

    def _change(self, changes: SocketChanges) -> set[ProxyKey] | None:
        """Apply `changes` to what is wanted; the keys they touch, or None (nothing applied)
        when they do not fit: a removed socket that is not the one wanted, an address that
        would be, or was, named twice."""
        keys = changes.keys()
        if (
            keys & self._twice
            or not _fits(changes.proxies_removed, changes.proxies_added, self._wanted)
            or not _fits(changes.claims_removed, changes.claims_added, self._claimed)
        ):
            return None
        for p in changes.proxies_removed:
            del self._wanted[p.key]
        for c in changes.claims_removed:
            del self._claimed[c.key]
        for p in changes.proxies_added:
            self._wanted[p.key] = p
        for c in changes.claims_added:
            self._claimed[c.key] = c
        self._stale |= keys
        return keys

    def _wants(self, key: ProxyKey) -> bool:
        return key in self._wanted or key in self._claimed

    def _holds(self, key: ProxyKey) -> bool:
        """A claim wanted on key (a listener wanted there holds it instead)."""
        return key in self._claimed and key not in self._wanted

    def _report(self, key: ProxyKey, status: ProxyStatus) -> None:
        self._statuses[key] = status
        if key in self._wanted and key not in self._claimed:
            self._served[key] = status
        else:
            self._served.pop(key, None)

    async def release(self) -> None:
        """Close the listeners and claims the last sync() no longer wanted."""
        stale, self._stale = sorted(self._stale), set()
        await self._close([k for k in stale if k in self.listeners and k not in self._wanted])
        dropped = 0
        for key in stale:
            if key in self.held and not self._holds(key):
                dropped += 1
                if dropped % _YIELD_EVERY == 0:  # 5,000 claims released must not stall the loop
                    await asyncio.sleep(0)
                self._drop_claim(key)

    def _drop_claim(self, key: ProxyKey) -> None:
        sock, owner = self.held.pop(key)
        if sock is not None:
            sock.close()
        log.debug("port claim released", listen=describe(key), publication=owner.key)

    async def _hold(self, key: ProxyKey, claim: Claim) -> ProxyStatus:
        try:
            sock = await self._bind(key, lambda: open_claim(key))
        except OSError as exc:
            return self._failed(key, claim.owner, exc)
        self.held[key] = (sock, claim.owner)
        self.failed.pop(key, None)
        log.debug("port claimed", listen=describe(key), publication=claim.owner.key)
        return ProxyStatus("listening", claim.owner)

    async def _bind(self, key: ProxyKey, bind: Callable[[], _T]) -> _T:
        """bind(), and once more after closing a socket of ours that is no longer wanted and
        overlaps key (a publication that moved from 127.0.0.1 to 0.0.0.0, or from a claim to
        a listener): our own stale socket must not make a publication lose its port."""
        try:
            return bind()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            stale = [
                k
                for k in self._stale
                if k in self.listeners and k not in self._wanted and _overlap(k, key)
            ]
            held = [
                k for k in self._stale if k in self.held and not self._holds(k) and _overlap(k, key)
            ]
            if not stale and not held:
                raise
        await self._close(stale)
        for k in held:
            self._drop_claim(k)
        return bind()

    def _failed(self, key: ProxyKey, owner: ResourceRef, exc: OSError) -> ProxyStatus:
        previous = self.failed.get(key)
        status = bind_failure(key, owner, exc)
        if status.reason == "PortInUse":
            # Naming the holder scans /proc: do it when a failure appears, not every resync.
            if (
                previous is not None
                and previous.owner == owner
                and (previous.reason == "PortInUse")
            ):
                status = previous
            else:
                status = ProxyStatus(
                    status.state, owner, status.reason, status.message + describe_holder(key)
                )
        if previous != status:  # log changes, not every resync
            log.warning(
                "port claim failed",
                listen=describe(key),
                publication=owner.key,
                reason=status.reason,
                message=status.message,
            )
        self.failed[key] = status
        return status

    async def _ensure(
        self, loop: asyncio.AbstractEventLoop, key: ProxyKey, port: ProxyPort
    ) -> ProxyStatus:
        current = self.listeners.get(key)
        if current is not None:
            if current.port != port:
                log.info(
                    "proxy retargeted",
                    listen=describe(key),
                    publication=port.owner.key,
                    target=f"{port.target}:{port.target_port}",
                )
                current.retarget(port)
            return ProxyStatus("listening", port.owner)
        try:
            self.listeners[key] = await self._bind(key, lambda: self._listen(loop, port))
        except OSError as exc:
            return self._failed(key, port.owner, exc)
        self.failed.pop(key, None)
        log.info(
            "proxy listening",
            listen=describe(key),
            publication=port.owner.key,
            target=f"{port.target}:{port.target_port}",
            why=port.why,
        )
        return ProxyStatus("listening", port.owner)

    def _listen(self, loop: asyncio.AbstractEventLoop, port: ProxyPort) -> Listener:
        sock = open_listener(port.key)
        try:
            pool = self._workers()
            slot = pool.allocate()
            if slot is None:
                raise OSError(errno.ENOSPC, "the proxy's listener table is full")
            kind = TcpListener if port.protocol is Protocol.TCP else UdpListener
            return kind(loop, sock, port, pool, slot)
        except BaseException:
            sock.close()
            raise

    def _workers(self) -> WorkerPool:
        if self._pool is None:
            limits = wire.Limits(
                max_connections=self.max_tcp_connections,
                connect_timeout=self.connect_timeout,
                max_per_source=self.fairness.tcp_per_source,
                idle_timeout=self.fairness.tcp_idle_timeout,
                max_udp_flows=self.max_udp_flows,
                udp_idle_timeout=self.udp_idle_timeout,
                udp_per_source=self.fairness.udp_flows_per_source,
            )
            self._pool = WorkerPool(self.workers, limits, on_log=self._worker_log)
            log.info("proxy workers started", workers=self.workers)
        return self._pool

    def _worker_log(self, slot: int, message: wire.Log) -> None:
        for listener in self.listeners.values():
            if isinstance(listener, PooledListener) and listener.slot == slot:
                listener.worker_log(message)
                return
        if slot < 0:  # not about one listener (a listener's own lines die with it)
            log.error("proxy worker error", kind=message["kind"], error=message["error"])

    async def _close(self, keys: list[ProxyKey]) -> None:
        """Close listeners, the workers' copies first, in one round trip."""
        closing = [self.listeners.pop(key) for key in keys]
        slots = [lst.slot for lst in closing if isinstance(lst, PooledListener)]
        if slots and self._pool is not None:
            await self._pool.unlisten(slots)
        for listener in closing:
            listener.close()
            log.info("proxy stopped", listen=describe(listener.port.key))

    def rows(self) -> Iterator[Row]:
        """Every listener with its counters (the per-publication metrics add them up)."""
        return self._rows()

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
        await self._close(list(self.listeners))
        for key in list(self.held):
            self._drop_claim(key)
        self.failed.clear()
        self._wanted, self._claimed, self._twice, self._stale = {}, {}, set(), set()
        self._statuses, self._served = {}, {}
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._registry is not None:
            with contextlib.suppress(KeyError):
                self._registry.unregister(self._collector)
            self._registry = None


def _fits(removed: Sequence[_S], added: Sequence[_S], wanted: Mapping[ProxyKey, _S]) -> bool:
    """Each removed socket is the one wanted at its address, and afterwards no address is
    wanted twice."""
    gone = {s.key for s in removed}
    if len(gone) != len(removed) or any(wanted.get(s.key) != s for s in removed):
        return False
    came = {s.key for s in added}
    return len(came) == len(added) and not any(k in wanted and k not in gone for k in came)


def _overlap(a: ProxyKey, b: ProxyKey) -> bool:
    """Two binds that the kernel would refuse to let coexist (V6ONLY keeps families apart)."""
    if a.port != b.port or a.protocol != b.protocol:
        return False
    if family_of(a.listen) != family_of(b.listen):
        return False
    return a.listen == b.listen or is_wildcard(a.listen) or is_wildcard(b.listen)
