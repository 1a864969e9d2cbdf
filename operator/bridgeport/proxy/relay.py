"""Zero-copy TCP relay: splice(2) through a pipe per direction, driven by the event loop.

Bytes go socket -> pipe -> socket inside the kernel; Python only sees counts. Each direction
holds at most one pipe's worth of data (PIPE_SIZE): when the destination cannot take more,
reading from the source stops until it can (backpressure, bounded memory, and a stuck peer
only ever waits on its own connection). No task or thread per connection: callbacks only.

The relay starts while the upstream connect is still in flight: a write to a connecting
socket returns EAGAIN (so data waits in the pipe for EPOLLOUT), and a failed connect shows up
as an error on the first splice. That saves the writable-wait and the timer per connection;
connections never confirmed by data are checked against the connect timeout by a sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
from typing import Any, Protocol

from bridgeport.proxy.stats import ListenerStats

PIPE_SIZE = 256 * 1024  # bytes in flight per direction; see bench/proxy/README.md
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_splice = os.splice  # positional arguments and no attribute lookup: this is the hot path
_BURST = 8  # chunks per wakeup before yielding to other connections
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_RESET = struct.pack("ii", 1, 0)
_TCP_SYN_SENT = 2  # tcpi_state, first byte of struct tcp_info
CONNECT_ERRORS = {errno.ECONNREFUSED: "connect_refused", errno.ETIMEDOUT: "connect_timeout",
                  errno.EHOSTUNREACH: "connect_unreachable",
                  errno.ENETUNREACH: "connect_unreachable"}


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


def still_connecting(sock: socket.socket) -> bool:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_SYN_SENT
    except OSError:
        return False


class Owner(Protocol):
    stats: ListenerStats

    def relay_confirmed(self, relay: Relay) -> None: ...
    def relay_closed(self, relay: Relay) -> None: ...
    def error(self, kind: str, event: str, **fields: Any) -> None: ...


class _Pump:
    """One direction: src -> pipe -> dst."""

    __slots__ = ("dst", "eof", "other", "pending", "pipe", "reading", "relay", "src",
                 "to_target")

    def __init__(self, relay: Relay, src: int, dst: int, pipe: tuple[int, int],
                 to_target: bool) -> None:
        self.relay, self.src, self.dst, self.pipe = relay, src, dst, pipe
        self.to_target = to_target
        self.other: _Pump = self
        self.pending = 0  # bytes sitting in the pipe
        self.eof = False
        self.reading = True  # reader armed on src; False while dst is full (writer armed)

    def on_readable(self) -> None:
        for _ in range(_BURST):
            try:
                n = _splice(self.src, self.pipe[1], PIPE_SIZE, None, None, _FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                self.relay.fail(exc, upstream=not self.to_target)
                return
            if n == 0:
                self.finish()
                return
            if not self.to_target:
                self.relay.confirm()
            self.pending = n
            if not self.drain() or n < PIPE_SIZE:
                return  # a short read emptied the socket: skip the EAGAIN round trip

    def drain(self) -> bool:
        """Move the pipe's content to dst; False (and paused) if dst is full."""
        relay = self.relay
        while self.pending:
            try:
                n = _splice(self.pipe[0], self.dst, self.pending, None, None, _FLAGS)
            except BlockingIOError:
                if self.reading:
                    self.reading = False
                    relay.loop.remove_reader(self.src)
                    relay.loop.add_writer(self.dst, self.on_writable)
                return False
            except OSError as exc:
                relay.fail(exc, upstream=self.to_target)
                return False
            self.pending -= n
            if self.to_target:
                relay.stats.bytes_in += n
                relay.confirm()
            else:
                relay.stats.bytes_out += n
        return True

    def on_writable(self) -> None:
        if self.drain():
            self.reading = True
            self.relay.loop.remove_writer(self.dst)
            self.relay.loop.add_reader(self.src, self.on_readable)

    def finish(self) -> None:
        """src sent FIN: pass the half-close on and keep relaying the other way."""
        self.eof = True
        self.reading = False
        self.relay.loop.remove_reader(self.src)
        if self.other.eof:
            self.relay.close()  # close() sends our FIN; no separate shutdown needed
            return
        try:
            socket.socket.shutdown(self.relay.sock_of(self.dst), socket.SHUT_WR)
        except OSError as exc:
            self.relay.fail(exc, upstream=self.to_target)


class Relay:
    """A client connection and its upstream, relayed until both sides are done."""

    __slots__ = ("client", "closed", "confirmed", "loop", "owner", "pool", "pumps", "started",
                 "stats", "upstream")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, pool: PipePool, owner: Owner) -> None:
        self.loop, self.client, self.upstream, self.pool = loop, client, upstream, pool
        self.owner, self.stats = owner, owner.stats
        self.closed = self.confirmed = False
        self.started = loop.time()
        c, u = client.fileno(), upstream.fileno()
        to_target, to_client = _Pump(self, c, u, pool.get(), True), _Pump(self, u, c,
                                                                          pool.get(), False)
        to_target.other, to_client.other = to_client, to_target
        self.pumps = (to_target, to_client)
        loop.add_reader(c, to_target.on_readable)
        loop.add_reader(u, to_client.on_readable)

    def sock_of(self, fd: int) -> socket.socket:
        return self.client if fd == self.pumps[0].src else self.upstream

    def confirm(self) -> None:
        """Data moved to or from the target: the connect succeeded."""
        if not self.confirmed:
            self.confirmed = True
            self.owner.relay_confirmed(self)

    def fail(self, exc: OSError, upstream: bool) -> None:
        """An error on either side: reset both, the way a direct connection would fail."""
        kind = CONNECT_ERRORS.get(exc.errno or 0) if upstream and not self.confirmed else None
        if kind is not None:
            self.owner.error(kind, "proxy cannot connect to the target", error=str(exc))
        else:
            self.stats.errors["reset"] += 1
        self.close(hard=True)

    def close(self, hard: bool = False) -> None:
        """End both sides; hard sends RST (no TIME_WAIT left holding the host port)."""
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        for pump in self.pumps:
            if pump.reading:
                loop.remove_reader(pump.src)
            elif not pump.eof:
                loop.remove_writer(pump.dst)
            self.pool.put(pump.pipe, empty=not pump.pending)
        if hard:
            reset(self.client)
            reset(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        self.owner.relay_closed(self)
