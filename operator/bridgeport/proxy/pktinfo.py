"""IP_PKTINFO / IPV6_PKTINFO helpers: make a UDP reply leave from the address the client sent to.

Standard library only: the proxy workers import it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

# Missing from Python 3.11's socket module on Linux (linux/in.h).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex


def enable_pktinfo(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


Ancillary = list[tuple[int, int, bytes]]


def reply_pktinfo(ancdata: Ancillary) -> Ancillary:
    """From a datagram's ancillary data, the pktinfo that makes a reply leave from the
    address the client sent to (the kernel would otherwise pick the route's source)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _, local, _ = _IN_PKTINFO.unpack_from(data)
            return [(level, kind, _IN_PKTINFO.pack(0, local, bytes(4)))]
        if (
            level == socket.IPPROTO_IPV6
            and kind == socket.IPV6_PKTINFO
            and len(data) >= _IN6_PKTINFO.size
        ):
            # Keep the interface: a link-local source is only meaningful with it.
            return [(level, kind, bytes(data[: _IN6_PKTINFO.size]))]
    return []


def pack_pktinfo(address: str, ifindex: int = 0) -> Ancillary:
    """Ancillary data choosing the source address of a sent datagram (used by tests too)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(ifindex, ip.packed, bytes(4)))]
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(ip.packed, ifindex))]
