"""The TCP relay engine of a proxy worker: one edge-triggered epoll loop, splice(2) relays.

Every worker registers the agent's listening sockets with EPOLLEXCLUSIVE, so the kernel
wakes one worker per new connection and the workers share the load with no user-space
balancing. A connection is two sockets registered once, edge-triggered, for reading and
writing; nothing is re-armed afterwards (2 epoll_ctl per connection, against 12 for libuv).

Each direction starts by copying (recv into one buffer the worker shares, send at once), and
switches to splice for good once a read fills that buffer: a bulk stream. Small exchanges
(requests, responses) then cost one recv and one send, where splice costs two plus an EAGAIN
read (a short splice proves nothing: it can stop on pipe slots; a short recv means the socket
was empty). Spliced bytes go socket -> pipe -> socket inside the kernel; Python only sees
counts. Each direction holds at most a copy buffer or one pipe's worth of data: when the
destination cannot take more, that direction stops reading until an EPOLLOUT edge says it can
(backpressure, bounded memory, and a stuck peer only ever waits on its own connection).

The relay starts while the upstream connect is still in flight: client bytes wait in the
client's socket until the connect's EPOLLOUT edge. A connect that never completes is reset
once connect_timeout has passed. Measurements: bench/proxy/README.md.

The loop sleeps until its earliest deadline (the oldest pending connect's timeout, a paused
listener's rest, the next idle check of TCP connections or UDP flows, when there are any) or
until an event: an idle worker blocks in epoll_wait and is never woken. The agent's death
wakes it too: its end of the control channel closes, which reads as EOF (worker.py).

UDP listeners (datagram.py) run on the same loop: each lives in one worker only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bridgeport.proxy import wire
from bridgeport.proxy.datagram import Flow, UdpRelay
from bridgeport.proxy.shared_counters import (
    ACTIVE,
    BYTES_IN,
    BYTES_OUT,
    CONNECTIONS,
    ERROR_KINDS,
    FIRST_ERROR,
    Counters,
)

PIPE_SIZE = 256 * 1024  # bytes in flight per spliced direction; see bench/proxy/README.md
# A read that fills the copy buffer marks a bulk stream: that direction splices from then on.
COPY_SIZE = 64 * 1024
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_splice = os.splice  # no attribute lookup: this is the hot path
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_RESET = struct.pack("ii", 1, 0)
_ACCEPT_BURST = 64  # accepts per wakeup, so a connection storm cannot starve other work
_PAUSE = 0.1  # seconds a listener rests when the worker is out of file descriptors
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_FAILED = select.EPOLLHUP | select.EPOLLERR
_RECV = socket.MSG_DONTWAIT
_SEND = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_READ = select.EPOLLIN | _HUP
_OUT = select.EPOLLOUT
_RELAY_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_LISTEN_EVENTS = select.EPOLLIN | select.EPOLLEXCLUSIVE
CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connect_refused",
    errno.ETIMEDOUT: "connect_timeout",
    errno.EHOSTUNREACH: "connect_unreachable",
    errno.ENETUNREACH: "connect_unreachable",
}
_ERROR_CELL = {kind: FIRST_ERROR + i for i, kind in enumerate(ERROR_KINDS)}
Report = Callable[[wire.Log], None]


class PipePool:
    """Empty pipes kept for reuse: a fresh pair costs pipe2, fcntl and two closes."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # keep the default size if the limit refuses
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def put(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self._free) < self.limit:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        while self._free:
            self.put(self._free.pop(), empty=False)


def reset(sock: socket.socket) -> None:
    """Close with RST, so the peer learns the connection failed rather than ended."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class Engine:
    """Listeners and relays of one worker; run() until stop()."""

    def __init__(
        self,
        counters: Counters,
        worker: int,
        limits: wire.Limits,
        *,
        report: Report,
        log_interval: float = 10.0,
    ) -> None:
        self.counters, self.cells, self.worker = counters, counters.cells, worker
        self.max_connections, self.connect_timeout = limits.max_connections, limits.connect_timeout
        # Fairness: one client address cannot hold a listener's every connection, and a
        # connection with no bytes either way for idle_timeout is reset (0: never).
        self.max_per_source, self.idle_timeout = limits.max_per_source, limits.idle_timeout
        self.now = time.monotonic()  # once per loop turn: what relays stamp as activity
        # When the next idle check of TCP connections / UDP flows is due (inf: none to check).
        # Each check schedules the next one for the oldest survivor's expiry, at least a
        # quarter timeout (capped at 5 s) later: a reset comes at most that late.
        self.next_idle = self.next_udp = math.inf
        self.idle_every = min(max(self.idle_timeout / 4, 0.05), 5.0)
        self.report, self.log_interval = report, log_interval
        self.epoll = select.epoll()
        self.handlers: dict[int, Any] = {}  # fd -> object with .event(fd, mask)
        self.acceptors: dict[int, Acceptor] = {}  # by slot
        self.unconfirmed: dict[Relay, None] = {}  # connects in flight, oldest first
        self.ready: list[Acceptor] = []  # listeners with connections waiting, see run()
        self.paused: dict[Acceptor, float] = {}  # listeners resting until, see pause()
        self.pool = PipePool()
        self.buffer = memoryview(bytearray(COPY_SIZE))  # every copying direction's
        # UDP: flows per listener, seconds idle before a flow closes, flows per client address.
        self.max_udp_flows, self.udp_idle_timeout = limits.max_udp_flows, limits.udp_idle_timeout
        self.udp_per_source = limits.udp_per_source
        self.udp_every = min(max(self.udp_idle_timeout / 4, 0.05), 5.0)
        self.datagrams: dict[int, UdpRelay] = {}  # UDP listeners, by slot
        self.datagram_buffer = bytearray(65536)  # the largest datagram
        self.running = True
        self._quiet_until: dict[tuple[int, str], float] = {}
        self._suppressed: dict[tuple[int, str], int] = {}

    # -- control -------------------------------------------------------------------------

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` whenever fd is readable (level-triggered: the control channel)."""
        self.handlers[fd] = _Callback(callback)
        self.epoll.register(fd, select.EPOLLIN)

    def listen(self, slot: int, sock: socket.socket, target: tuple[str, int]) -> None:
        if slot in self.acceptors or slot in self.datagrams:
            self.unlisten(slot)
        if sock.type == socket.SOCK_DGRAM:
            self.datagrams[slot] = UdpRelay(self, slot, sock, target)
            return
        sock.setblocking(False)
        self.acceptors[slot] = acceptor = Acceptor(self, slot, sock, target)
        self.handlers[sock.fileno()] = acceptor
        self.epoll.register(sock.fileno(), _LISTEN_EVENTS)

    def retarget(self, slot: int, target: tuple[str, int]) -> None:
        if acceptor := self.acceptors.get(slot):
            acceptor.set_target(target)
        elif datagrams := self.datagrams.get(slot):
            datagrams.set_target(target)

    def unlisten(self, slot: int) -> None:
        """Stop accepting and reset every connection of the listener (UDP: close its flows)."""
        if (datagrams := self.datagrams.pop(slot, None)) is not None:
            datagrams.close()
        acceptor = self.acceptors.pop(slot, None)
        if acceptor is None:
            return
        if acceptor in self.ready:
            self.ready.remove(acceptor)
        fd = acceptor.sock.fileno()
        if self.paused.pop(acceptor, None) is None:
            self.epoll.unregister(fd)
        del self.handlers[fd]
        acceptor.sock.close()
        for relay in list(acceptor.relays):
            relay.close(hard=True)
        for key in [k for k in self._quiet_until if k[0] == slot]:
            del self._quiet_until[key]
            self._suppressed.pop(key, None)

    def stop(self) -> None:
        """End run() after this loop turn. Call it from a callback of the loop (watch()):
        from elsewhere it takes effect only when an event or a deadline next wakes the loop."""
        self.running = False

    def close(self) -> None:
        for slot in [*self.acceptors, *self.datagrams]:
            self.unlisten(slot)
        self.pool.close()
        self.epoll.close()

    # -- loop ----------------------------------------------------------------------------

    def run(self) -> None:
        poll, handlers = self.epoll.poll, self.handlers
        while self.running:
            try:
                events = poll(self._timeout(time.monotonic()), 256)
            except InterruptedError:
                continue
            self.now = now = time.monotonic()
            if now >= self.next_idle:
                self._reap_idle(now)
            if now >= self.next_udp:
                self._reap_udp(now)
            for fd, mask in events:
                handler = handlers.get(fd)
                if handler is None:  # its fd was closed earlier in this batch
                    continue
                try:
                    handler.event(fd, mask)
                except Exception as exc:  # a bug must cost one connection, not the worker
                    self._contain(handler, exc)
            # Accepting after the batch means no fd number is reused while the batch still
            # holds events for its previous owner.
            while self.ready:
                acceptor = self.ready.pop()
                try:
                    acceptor.accept()
                except Exception as exc:
                    self._contain(acceptor, exc)
            if self.unconfirmed:
                self._sweep(time.monotonic())
            if self.paused:
                self._resume(time.monotonic())

    def _timeout(self, now: float) -> float:
        """Seconds until the earliest deadline; -1 (block until an event) when there is none."""
        due = min(self.next_idle, self.next_udp)
        if self.unconfirmed:  # oldest first: the first one times out first
            due = min(due, next(iter(self.unconfirmed)).started + self.connect_timeout)
        if self.paused:
            due = min(due, *self.paused.values())
        # epoll_wait rounds the timeout up to a whole millisecond: no early wakeup, no spin.
        return -1.0 if due == math.inf else max(due - now, 0.0)

    def pause(self, acceptor: Acceptor) -> None:
        """Out of file descriptors: stop accepting for a moment rather than spin on a
        listener that stays readable (clients wait in the backlog meanwhile)."""
        if acceptor not in self.paused:
            self.epoll.unregister(acceptor.sock.fileno())
            self.paused[acceptor] = time.monotonic() + _PAUSE

    def _resume(self, now: float) -> None:
        for acceptor, until in list(self.paused.items()):
            if until <= now:
                del self.paused[acceptor]
                self.epoll.register(acceptor.sock.fileno(), _LISTEN_EVENTS)

    def _contain(self, handler: Any, exc: Exception) -> None:
        if isinstance(handler, UdpRelay):
            handler.error("internal", f"{type(exc).__name__}: {exc}")
        elif isinstance(handler, Flow):
            handler.relay.error("internal", f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                handler.relay.drop(handler)
        elif isinstance(handler, Relay | Acceptor):
            owner = handler.acceptor if isinstance(handler, Relay) else handler
            owner.error("internal", f"{type(exc).__name__}: {exc}")
            if isinstance(handler, Relay):
                with contextlib.suppress(Exception):
                    handler.close(hard=True)
        else:
            self.report(
                {
                    "op": "log",
                    "slot": -1,
                    "kind": "internal",
                    "error": f"{type(exc).__name__}: {exc}",
                    "suppressed": 0,
                }
            )

    def _reap_idle(self, now: float) -> None:
        """Reset connections that moved no bytes for idle_timeout."""
        deadline, oldest = now - self.idle_timeout, math.inf
        for acceptor in list(self.acceptors.values()):
            idle = []
            for relay in acceptor.relays:
                if relay.last <= deadline:
                    idle.append(relay)
                elif relay.last < oldest:
                    oldest = relay.last
            # Counted before the resets, so a client that sees one finds it counted.
            self.cells[acceptor.base + _ERROR_CELL["idle_timeout"]] += len(idle)
            for relay in idle:
                relay.close(hard=True)
        self.next_idle = _next_check(oldest + self.idle_timeout, now + self.idle_every)

    def _reap_udp(self, now: float) -> None:
        """Close the UDP flows idle for udp_idle_timeout."""
        oldest = min((relay.reap(now) for relay in self.datagrams.values()), default=math.inf)
        self.next_udp = _next_check(oldest + self.udp_idle_timeout, now + self.udp_every)

    def _sweep(self, now: float) -> None:
        """Reset connections whose connect to the target has not completed in time."""
        deadline = now - self.connect_timeout
        while self.unconfirmed:
            relay = next(iter(self.unconfirmed))  # the oldest
            if relay.started > deadline:
                return
            relay.acceptor.error("connect_timeout", f"no answer within {self.connect_timeout:g}s")
            relay.close(hard=True)  # takes it out of unconfirmed

    def error(self, slot: int, kind: str, message: str) -> None:
        """Count an error and report it to the agent, at most once per interval per kind."""
        self.cells[self.counters.base(slot, self.worker) + _ERROR_CELL[kind]] += 1
        key, now = (slot, kind), time.monotonic()
        if now < self._quiet_until.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._quiet_until[key] = now + self.log_interval
        self.report(
            {
                "op": "log",
                "slot": slot,
                "kind": kind,
                "error": message,
                "suppressed": self._suppressed.pop(key, 0),
            }
        )


def _next_check(expiry: float, earliest: float) -> float:
    """When to check again: at `expiry` (inf: nothing left to expire), not before `earliest`."""
    return expiry if expiry == math.inf else max(expiry, earliest)


class _Callback:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def event(self, fd: int, mask: int) -> None:
        self.callback()


class Acceptor:
    """One shared listening socket: accepts, connects to the target, starts a relay."""

    def __init__(
        self, engine: Engine, slot: int, sock: socket.socket, target: tuple[str, int]
    ) -> None:
        self.engine, self.slot, self.sock = engine, slot, sock
        self.base = engine.counters.base(slot, engine.worker)
        self.relays: set[Relay] = set()
        self.set_target(target)

    def set_target(self, target: tuple[str, int]) -> None:
        self.target = target
        self.family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET

    def event(self, fd: int, mask: int) -> None:
        self.engine.ready.append(self)

    def accept(self) -> None:
        engine, cells = self.engine, self.engine.cells
        for _ in range(_ACCEPT_BURST):
            try:
                client, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS...: the backlog keeps the client waiting
                out_of_fds = exc.errno in _OUT_OF_FDS
                # accept(2) takes a descriptor before it looks at the backlog, so with none
                # left it fails even when no client waits: that defers nobody (a client that
                # comes makes the listener readable, and this fail again).
                if out_of_fds and not _readable(self.sock):
                    return
                self.error("accept", str(exc))
                if out_of_fds:
                    engine.pause(self)
                return
            cells[self.base + CONNECTIONS] += 1
            if engine.counters.active(self.slot) >= engine.max_connections:
                reset(client)
                self.error("connection_limit", f"limit {engine.max_connections} reached")
                continue
            bucket = engine.counters.bucket(self.slot, address[0])
            if engine.max_per_source and (
                engine.counters.source_active(bucket) >= engine.max_per_source
            ):
                self.error(
                    "source_limit",
                    f"{address[0][:45]} holds {engine.max_per_source} "
                    "connections, the per-source limit",
                )  # counted before the reset
                reset(client)
                continue
            self._connect(client, engine.counters.source_cell(bucket, engine.worker))

    def _connect(self, client: socket.socket, source_cell: int) -> None:
        # The accepted socket stays blocking while its relay copies (MSG_DONTWAIT on each
        # call): one ioctl fewer per connection. Splicing needs O_NONBLOCK (to_splice).
        try:
            upstream = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            reset(client)
            self.error("accept", f"cannot open a socket to the target: {exc}")
            return
        # A relay must not add Nagle delays (Go, hence docker-proxy, does the same); accepted
        # sockets inherit TCP_NODELAY from the listener (set by the agent).
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = upstream.connect_ex(self.target)
        if code not in (0, errno.EINPROGRESS):
            reset(client)
            upstream.close()
            self.error(CONNECT_ERRORS.get(code, "connect"), os.strerror(code))
            return
        Relay(self, client, upstream, source_cell)

    def error(self, kind: str, message: str) -> None:
        self.engine.error(self.slot, kind, message)


def _readable(sock: socket.socket) -> bool:
    """A client waits in the listener's backlog (poll(2): no descriptor needed)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _Pump:
    """One direction: src -> dst, copied through the shared buffer, then spliced through a pipe
    once a read fills the buffer."""

    __slots__ = (
        "bulk",
        "bytes_cell",
        "dst",
        "eof",
        "held",
        "hup",
        "pending",
        "pipe",
        "recv_into",
        "send",
        "src",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, bytes_cell: int) -> None:
        self.src, self.dst, self.bytes_cell = src.fileno(), dst.fileno(), bytes_cell
        self.recv_into, self.send = src.recv_into, dst.send
        self.pipe: tuple[int, int] | None = None  # set when this direction splices
        self.pending = 0  # bytes waiting for dst: in `held`, or in the pipe
        self.held = _EMPTY  # copied bytes dst could not take yet
        self.eof = False  # src's FIN was read (and passed on once nothing is pending)
        # src signalled its FIN (EPOLLRDHUP) or an error (EPOLLHUP, EPOLLERR): read to the
        # end, because under edge triggering that signal is not repeated.
        self.hup = 0
        self.bulk = False  # a read filled the copy buffer: splice from now on


_EMPTY = memoryview(b"")


class Relay:
    """A client connection and its upstream, relayed until both sides are done."""

    __slots__ = (
        "acceptor",
        "c",
        "client",
        "closed",
        "confirmed",
        "engine",
        "last",
        "pumps",
        "source_cell",
        "started",
        "u",
        "upstream",
    )

    def __init__(
        self,
        acceptor: Acceptor,
        client: socket.socket,
        upstream: socket.socket,
        source_cell: int,
    ) -> None:
        engine = acceptor.engine
        self.acceptor, self.engine, self.client, self.upstream = acceptor, engine, client, upstream
        self.c, self.u = c, u = client.fileno(), upstream.fileno()
        self.closed = self.confirmed = False
        self.started = self.last = time.monotonic()
        self.source_cell = source_cell
        engine.cells[source_cell] += 1
        base = acceptor.base
        self.pumps = (
            _Pump(client, upstream, base + BYTES_IN),
            _Pump(upstream, client, base + BYTES_OUT),
        )
        engine.cells[base + ACTIVE] += 1
        acceptor.relays.add(self)
        if engine.next_idle == math.inf and engine.idle_timeout:  # the first connection
            engine.next_idle = self.started + engine.idle_timeout
        engine.unconfirmed[self] = None
        engine.handlers[c] = engine.handlers[u] = self
        engine.epoll.register(c, _RELAY_EVENTS)
        engine.epoll.register(u, _RELAY_EVENTS)

    def event(self, fd: int, mask: int) -> None:
        to_target, to_client = self.pumps
        self.last = self.engine.now
        if fd == self.c:
            if mask & _READ:
                if mask & _HUP:
                    to_target.hup |= mask & _HUP
                if self.confirmed:  # else the client's bytes wait in its socket
                    self.pump(to_target)
            if mask & _OUT and to_client.pending and not self.closed:
                self.pump(to_client)
            return
        if not self.confirmed:
            if not self._connected(mask):
                return
            self.pump(to_target)  # what the client sent while the connect was in flight
            mask &= ~_OUT
        if mask & _READ and not self.closed:
            if mask & _HUP:
                to_client.hup |= mask & _HUP
            self.pump(to_client)
        if mask & _OUT and to_target.pending and not self.closed:
            self.pump(to_target)

    def _connected(self, mask: int) -> bool:
        """The upstream's first events: has the connect succeeded (or failed)?"""
        if mask & _FAILED:  # only then can SO_ERROR hold a code: spare the syscall otherwise
            code = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail(OSError(code, os.strerror(code)), upstream=True)
                return False
        if not mask & _OUT:
            return False  # still connecting
        self.confirmed = True
        del self.engine.unconfirmed[self]
        return True

    def pump(self, p: _Pump) -> None:
        """Move what src has to dst until src is empty or dst is full (edge-triggered)."""
        if p.pipe is None and not self.copy(p):
            return
        assert p.pipe is not None  # copy() returns True once it took a pipe
        pipe_in = p.pipe[1]
        while self.drain(p) and not p.eof:
            try:
                n = _splice(p.src, pipe_in, PIPE_SIZE, None, None, _FLAGS)
            except BlockingIOError:
                return  # src is empty: its next EPOLLIN edge resumes this direction
            except OSError as exc:
                self.fail(exc, upstream=p.src == self.u)
                return
            if n == 0:
                self.finish(p)
                return
            # Read on until EAGAIN, even after a short read: a pipe holds PIPE_SIZE / 4 KiB
            # buffers, one per skb fragment, so segments in separate pages (a NIC's receive
            # buffers) fill it with far fewer bytes while the socket still holds data, and
            # edge-triggered epoll reports no new edge for what is already queued. The extra
            # EAGAIN costs nothing measurable (bench/proxy/README.md); Go's splice does it too.
            p.pending = n

    def copy(self, p: _Pump) -> bool:
        """Copy until src is empty or dst is full; True once this direction splices."""
        buffer, cells = self.engine.buffer, self.engine.cells
        size = len(buffer)
        while self.drain(p) and not p.eof:
            if p.bulk and self.to_splice(p):
                return True
            try:
                n = p.recv_into(buffer, 0, _RECV)
            except BlockingIOError:
                return False  # src is empty: its next EPOLLIN edge resumes this direction
            except OSError as exc:
                self.fail(exc, upstream=p.src == self.u)
                return False
            if n == 0:
                self.finish(p)
                return False
            try:
                sent = p.send(buffer[:n], _SEND)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.fail(exc, upstream=p.dst == self.u)
                return False
            cells[p.bytes_cell] += sent
            p.bulk = n == size  # a full read: a bulk stream, spliced once dst took it all
            if sent < n:  # dst is full: keep the rest; dst's EPOLLOUT edge resumes
                p.held, p.pending = memoryview(buffer[sent:n].tobytes()), n - sent
                return False
            if not p.bulk:
                if p.hup == select.EPOLLRDHUP:  # the FIN came, after every byte: all read
                    self.finish(p)
                    return False
                if not p.hup:
                    return False  # a short TCP read means its receive queue is empty
        return False

    def to_splice(self, p: _Pump) -> bool:
        """A bulk stream: take a pipe (False, and keep copying, if none can be had)."""
        try:
            p.pipe = self.engine.pool.get()
        except OSError:  # out of descriptors: copying works too
            p.bulk = False
            return False
        if self.client.gettimeout() != 0.0:  # splice(2) honours only the socket's O_NONBLOCK
            self.client.setblocking(False)
        return True

    def drain(self, p: _Pump) -> bool:
        """Empty the pipe (or the held bytes) into dst; False if dst is full (its EPOLLOUT
        edge resumes)."""
        cells, n, pipe = self.engine.cells, p.pending, p.pipe
        if pipe is None:
            return self._send_held(p) if n else True
        while n:
            try:
                sent = _splice(pipe[0], p.dst, n, None, None, _FLAGS)
            except BlockingIOError:
                p.pending = n
                return False
            except OSError as exc:
                p.pending = n
                self.fail(exc, upstream=p.dst == self.u)
                return False
            n -= sent
            cells[p.bytes_cell] += sent
        p.pending = 0
        return True

    def _send_held(self, p: _Pump) -> bool:
        """The copied bytes dst could not take; False if it still cannot."""
        while p.pending:
            try:
                sent = p.send(p.held, _SEND)
            except BlockingIOError:
                return False
            except OSError as exc:
                self.fail(exc, upstream=p.dst == self.u)
                return False
            self.engine.cells[p.bytes_cell] += sent
            p.held, p.pending = p.held[sent:], p.pending - sent
        p.held = _EMPTY
        return True

    def finish(self, p: _Pump) -> None:
        """src sent FIN: pass the half-close on and keep relaying the other way."""
        p.eof = True
        other = self.pumps[1] if p is self.pumps[0] else self.pumps[0]
        if other.eof:
            self.close()  # close() sends our FIN; no separate shutdown needed
            return
        try:
            (self.upstream if p.dst == self.u else self.client).shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.fail(exc, upstream=p.dst == self.u)

    def fail(self, exc: OSError, upstream: bool) -> None:
        """An error on either side: reset both, the way a direct connection would fail."""
        kind = CONNECT_ERRORS.get(exc.errno or 0) if upstream and not self.confirmed else None
        if kind is not None:
            self.acceptor.error(kind, exc.strerror or str(exc))
        else:
            self.engine.cells[self.acceptor.base + _ERROR_CELL["reset"]] += 1
        self.close(hard=True)

    def close(self, hard: bool = False) -> None:
        """End both sides; hard sends RST (no TIME_WAIT left holding the host port)."""
        if self.closed:
            return
        self.closed = True
        engine = self.engine
        del engine.handlers[self.c], engine.handlers[self.u]
        engine.unconfirmed.pop(self, None)
        self.acceptor.relays.discard(self)
        engine.cells[self.acceptor.base + ACTIVE] -= 1
        engine.cells[self.source_cell] -= 1
        for p in self.pumps:
            if p.pipe is not None:
                engine.pool.put(p.pipe, empty=not p.pending)
        if hard:
            reset(self.client)
            reset(self.upstream)
        else:  # closing an fd removes it from the epoll set
            self.client.close()
            self.upstream.close()
