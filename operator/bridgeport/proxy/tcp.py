"""TCP listener: accept, start connecting to the target, relay at once (see relay.py).

Relay choice (bench/proxy/README.md; 2 vCPU, shared machine, medians of 3 rounds, 127.0.0.1
through the proxy to a target netns; x = ratio to kernel DNAT from another netns):

    relay                        iperf3 Gbit/s    proxy CPU    wrk conn/s (Connection: close)
    splice callbacks (kept)       8.2  0.77x       36%          7.8k  0.27x
    the same on uvloop            9.2  0.72x       32%          6.2k  0.29x
    asyncio Protocols, no splice  9.9  0.94x       64%          4.0k  0.19x
    socat -b 131072               7.6  0.63x       45%          1.6k  0.09x

splice moves bytes at about half the CPU of a read/write relay, and the callback relay (no
task per connection, relaying before connect() completes) doubles the connection rate.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from bridgeport.core.plan import ProxyPort
from bridgeport.proxy.listener import Listener
from bridgeport.proxy.relay import CONNECT_ERRORS, PipePool, Relay, reset, still_connecting

_ACCEPT_BURST = 64  # accepts per wakeup, so a connection storm cannot starve other listeners


class TcpListener(Listener):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, port: ProxyPort,
                 pool: PipePool, max_connections: int, connect_timeout: float) -> None:
        super().__init__(loop, sock, port)
        self.pool, self.max_connections = pool, max_connections
        self.connect_timeout = connect_timeout
        self.relays: set[Relay] = set()
        self.unconfirmed: dict[Relay, None] = {}  # insertion order is start order
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
            if len(self.relays) >= self.max_connections:
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
        # A relay must not add Nagle delays (Go, hence docker-proxy, does the same); accepted
        # sockets inherit TCP_NODELAY from the listener (set in sockets.py).
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = upstream.connect_ex(self.target)
        if code not in (0, errno.EINPROGRESS):
            reset(client)
            upstream.close()
            self.error(CONNECT_ERRORS.get(code, "connect"), "proxy cannot connect to the target",
                       error=errno.errorcode.get(code, str(code)))
            return
        relay = Relay(self.loop, client, upstream, self.pool, self)
        self.relays.add(relay)
        self.unconfirmed[relay] = None
        self.stats.active += 1

    def relay_confirmed(self, relay: Relay) -> None:
        self.unconfirmed.pop(relay, None)

    def relay_closed(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.unconfirmed.pop(relay, None)
        self.stats.active -= 1

    def tick(self, now: float) -> None:
        """Time out connects that never completed; confirm quiet ones that did."""
        deadline = now - self.connect_timeout
        for relay in list(self.unconfirmed):
            if relay.started > deadline:
                break
            if still_connecting(relay.upstream):
                self.error("connect_timeout", "proxy cannot connect to the target",
                           error=f"no answer within {self.connect_timeout:g}s")
                relay.close(hard=True)
            else:
                relay.confirm()

    def close(self) -> None:
        """Stop listening and end every connection: the port must be free afterwards."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for relay in list(self.relays):
            relay.close(hard=True)
