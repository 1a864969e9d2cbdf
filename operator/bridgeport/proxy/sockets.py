"""Listening sockets (the IP_PKTINFO helpers are in pktinfo.py, which the workers import).

Binding is how the proxy claims a host port: a host process that already holds it makes our
bind fail, and that is reported as a conflict instead of being silently shadowed.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from bridgeport.core.plan import ProxyKey
from bridgeport.core.specs import Protocol
from bridgeport.proxy.pktinfo import enable_pktinfo

TCP_BACKLOG = 1024


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def is_wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def open_listener(key: ProxyKey) -> socket.socket:
    """Bind (and for TCP listen on) key's address; raises OSError as the kernel reports it."""
    if key.protocol is Protocol.SCTP:
        raise OSError(0, "SCTP is not supported by the userland proxy")
    family = family_of(key.listen)
    kind = socket.SOCK_STREAM if key.protocol is Protocol.TCP else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            # 0.0.0.0 and :: must coexist as two listeners, as Docker binds them.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # Lets a restarted agent rebind past TIME_WAIT; a live listener still conflicts.
            # Never SO_REUSEPORT: it would share the port with a host process silently.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # No SO_REUSEADDR for UDP: there it lets two sockets bind one port, hiding conflicts.
        sock.bind((key.listen, key.port))
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accept()
            sock.listen(TCP_BACKLOG)
        elif is_wildcard(key.listen):
            enable_pktinfo(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def open_claim(key: ProxyKey) -> socket.socket | None:
    """A bound, never listening socket that keeps every other process off key's address:port
    (no SO_REUSEADDR, no SO_REUSEPORT: any overlapping bind fails with EADDRINUSE). None when
    the kernel has no such protocol at all (no SCTP module): then nothing can hold the port."""
    family = family_of(key.listen)
    if key.protocol is Protocol.TCP:
        kind, proto = socket.SOCK_STREAM, 0
    elif key.protocol is Protocol.UDP:
        kind, proto = socket.SOCK_DGRAM, 0
    else:
        kind, proto = socket.SOCK_STREAM, socket.IPPROTO_SCTP
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT):
            return None
        raise
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((key.listen, key.port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or kind != socket.SOCK_STREAM or proto:
                raise
            # TIME_WAIT leftovers (e.g. of our own proxy listener, a moment ago) block a plain
            # bind for a minute. With SO_REUSEADDR the bind still fails against any listener;
            # clearing it right after makes every later bind conflict with us again.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((key.listen, key.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except BaseException:
        sock.close()
        raise
    return sock
