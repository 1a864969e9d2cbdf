"""TCP listener, the agent's side: owns the bound socket; the workers relay (pool.py).

Relay choice (the figures, prototypes and runs are in bench/proxy/README.md): splice(2) moves
bulk streams without copying them through Python (small exchanges are copied: fewer syscalls
than a pipe round trip); an edge-triggered epoll loop of our own registers
each socket once, where uvloop's handles make several epoll_ctl calls per connection; worker
processes sharing the listening sockets use the cores one interpreter cannot (threads would
share its lock).
"""

from __future__ import annotations

from bridgeport.proxy.listener import PooledListener


class TcpListener(PooledListener):
    EVENTS = {
        "accept": "proxy accept failed",
        "connection_limit": "proxy connection limit reached, refusing",
        "internal": "proxy relay internal error (the connection was reset)",
    }
    DEFAULT_EVENT = "proxy cannot connect to the target"
