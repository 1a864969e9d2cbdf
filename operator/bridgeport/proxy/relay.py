"""Zero-copy TCP relay: splice(2) through a pipe per direction, driven by the event loop.

Bytes go socket -> pipe -> socket inside the kernel; Python only sees counts. Each direction
holds at most one pipe's worth of data (PIPE_SIZE): when the destination cannot take more,
reading from the source stops until it can (backpressure, bounded memory, and a stuck peer
only ever waits on its own connection). No task or thread per connection: callbacks only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from bridgeport.proxy.stats import ListenerStats

PIPE_SIZE = 256 * 1024  # bytes in flight per direction; see bench/proxy/README.md
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_BURST = 8  # chunks per wakeup before yielding to other connections
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_RESET = struct.pack("ii", 1, 0)


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


class _Pump:
    """One direction: src -> pipe -> dst."""

    __slots__ = ("dst", "eof", "pending", "pipe", "relay", "src", "to_target", "waiting")

    def __init__(self, relay: Relay, src: int, dst: int, pipe: tuple[int, int],
                 to_target: bool) -> None:
        self.relay, self.src, self.dst, self.pipe = relay, src, dst, pipe
        self.to_target = to_target
        self.pending = 0  # bytes sitting in the pipe
        self.eof = False
        self.waiting = False  # dst was full: reading src is paused, a writer is armed

    def on_readable(self) -> None:
        for _ in range(_BURST):
            try:
                n = os.splice(self.src, self.pipe[1], PIPE_SIZE, flags=_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self.relay.abort()
                return
            if n == 0:
                self.finish()
                return
            self.pending = n
            if not self.drain():
                return

    def drain(self) -> bool:
        """Move the pipe's content to dst; False (and paused) if dst is full."""
        relay = self.relay
        while self.pending:
            try:
                n = os.splice(self.pipe[0], self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                if not self.waiting:
                    self.waiting = True
                    relay.loop.remove_reader(self.src)
                    relay.loop.add_writer(self.dst, self.on_writable)
                return False
            except OSError:
                relay.abort()
                return False
            self.pending -= n
            if self.to_target:
                relay.stats.bytes_in += n
            else:
                relay.stats.bytes_out += n
        return True

    def on_writable(self) -> None:
        if self.drain():
            self.waiting = False
            self.relay.loop.remove_writer(self.dst)
            self.relay.loop.add_reader(self.src, self.on_readable)

    def finish(self) -> None:
        """src sent FIN: pass the half-close on and keep relaying the other way."""
        self.eof = True
        self.relay.loop.remove_reader(self.src)
        try:
            socket.socket.shutdown(self.relay.sock_of(self.dst), socket.SHUT_WR)
        except OSError:
            self.relay.abort()
            return
        self.relay.maybe_done()


class Relay:
    """A client connection and its upstream, relayed until both sides are done."""

    __slots__ = ("client", "closed", "loop", "on_close", "pool", "pumps", "stats", "upstream")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, pool: PipePool, stats: ListenerStats,
                 on_close: Callable[[Relay], None]) -> None:
        self.loop, self.client, self.upstream, self.pool = loop, client, upstream, pool
        self.stats, self.on_close, self.closed = stats, on_close, False
        c, u = client.fileno(), upstream.fileno()
        self.pumps = (_Pump(self, c, u, pool.get(), True), _Pump(self, u, c, pool.get(), False))
        for pump in self.pumps:
            loop.add_reader(pump.src, pump.on_readable)

    def sock_of(self, fd: int) -> socket.socket:
        return self.client if fd == self.pumps[0].src else self.upstream

    def maybe_done(self) -> None:
        if all(p.eof and not p.pending for p in self.pumps):
            self.close()

    def abort(self) -> None:
        """An error on either side: reset both, the way a direct connection would fail."""
        self.stats.errors["reset"] += 1
        self.close(hard=True)

    def close(self, hard: bool = False) -> None:
        """End both sides; hard sends RST (no TIME_WAIT left holding the host port)."""
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        for pump in self.pumps:
            if pump.waiting:
                loop.remove_writer(pump.dst)
            elif not pump.eof:
                loop.remove_reader(pump.src)
            self.pool.put(pump.pipe, empty=not pump.pending)
        if hard:
            reset(self.client)
            reset(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        self.on_close(self)
