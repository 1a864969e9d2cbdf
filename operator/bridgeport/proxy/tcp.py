"""TCP listener: accept, connect to the target (with a timeout), then splice-relay.

Relay choice, measured side by side on one 2-vCPU machine (bench/proxy/README.md):
RELAY_NUMBERS_PLACEHOLDER
"""

from __future__ import annotations

import asyncio
import errno
import socket

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy.listener import Listener
from bridgeport.proxy.relay import PipePool, Relay, reset

_ACCEPT_BURST = 64  # accepts per wakeup, so a connection storm cannot starve other listeners


class _Pending:
    """A client waiting for its upstream connect to finish."""

    __slots__ = ("client", "listener", "timer", "upstream")

    def __init__(self, listener: TcpListener, client: socket.socket,
                 upstream: socket.socket) -> None:
        self.listener, self.client, self.upstream = listener, client, upstream
        self.timer: asyncio.TimerHandle | None = None


class TcpListener(Listener):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, port: ProxyPort,
                 pool: PipePool, max_connections: int, connect_timeout: float) -> None:
        super().__init__(loop, sock, port)
        self.pool, self.max_connections = pool, max_connections
        self.connect_timeout = connect_timeout
        self.relays: set[Relay] = set()
        self.pending: set[_Pending] = set()
        loop.add_reader(sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS...: the backlog keeps the client waiting
                self.error("accept", "proxy accept failed", error=str(exc))
                return
            self.stats.connections += 1
            if len(self.relays) + len(self.pending) >= self.max_connections:
                reset(client)
                self.error("connection_limit", "proxy connection limit reached, refusing",
                           limit=self.max_connections)
                continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        client.setblocking(False)
        try:
            upstream = socket.socket(self.target_family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            reset(client)
            self.error("connect", "proxy cannot open a socket to the target", error=str(exc))
            return
        # Go (docker-proxy) does the same: a relay must not add Nagle delays.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = upstream.connect_ex(self.target)
        p = _Pending(self, client, upstream)
        self.stats.active += 1
        if code == 0:
            self._start(p)
        elif code == errno.EINPROGRESS:
            self.pending.add(p)
            self.loop.add_writer(upstream.fileno(), self._on_connected, p)
            p.timer = self.loop.call_later(self.connect_timeout, self._on_timeout, p)
        else:
            self._fail(p, code)

    def _on_connected(self, p: _Pending) -> None:
        self.pending.discard(p)
        self.loop.remove_writer(p.upstream.fileno())
        if p.timer is not None:
            p.timer.cancel()
        code = p.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(p, code)
        else:
            self._start(p)

    def _on_timeout(self, p: _Pending) -> None:
        self.pending.discard(p)
        self.loop.remove_writer(p.upstream.fileno())
        self._fail(p, errno.ETIMEDOUT)

    def _fail(self, p: _Pending, code: int) -> None:
        self.stats.active -= 1
        reset(p.client)
        p.upstream.close()
        kind = {errno.ECONNREFUSED: "connect_refused", errno.ETIMEDOUT: "connect_timeout"}
        self.error(kind.get(code, "connect"), "proxy cannot connect to the target",
                   error=errno.errorcode.get(code, str(code)))

    def _start(self, p: _Pending) -> None:
        self.relays.add(Relay(self.loop, p.client, p.upstream, self.pool, self.stats,
                              self._closed))

    def _closed(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.stats.active -= 1

    def close(self) -> None:
        """Stop listening and end every connection: the port must be free afterwards."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for p in list(self.pending):
            self.pending.discard(p)
            self.loop.remove_writer(p.upstream.fileno())
            if p.timer is not None:
                p.timer.cancel()
            self.stats.active -= 1
            reset(p.client)
            p.upstream.close()
        for relay in list(self.relays):
            relay.close(hard=True)
