"""Who holds a port: the socket's inode from /proc/net, then the process owning that inode.

Used only to explain a failed claim ("held by pid 812 (sshd)"). The kernel can tell only for
processes visible in our PID namespace; otherwise the message says what it knows.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from bridgeport.core.plan import ProxyKey
from bridgeport.core.specs import Protocol

_TCP_LISTEN = "0A"
_TCP_CLOSE = "07"  # a bound, not (yet) listening TCP socket


def _local(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """'0100007F:1F90' (host-order 32-bit words) -> (127.0.0.1, 8080)."""
    hexaddr, hexport = field.split(":")
    raw = bytes.fromhex(hexaddr)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(packed), int(hexport, 16)


def _conflicts(listen: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a socket bound on `address` can block a bind on `listen`. An IPv6 `::` socket
    may be dual-stack (/proc does not say), and v4-mapped addresses are IPv4 ones."""
    mine = ipaddress.ip_address(listen)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if mine.version != address.version:
        return mine.version == 4 and address.is_unspecified
    return mine.is_unspecified or address.is_unspecified or mine == address


def socket_inodes(key: ProxyKey, proc: Path = Path("/proc/thread-self/net")) -> list[int]:
    """Inodes of the sockets in this network namespace that stop us binding key."""
    if key.protocol is Protocol.SCTP:
        return []
    names = ("tcp", "tcp6") if key.protocol is Protocol.TCP else ("udp", "udp6")
    found: list[int] = []
    for name in names:
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            address, port = _local(cols[1])
            if port != key.port or cols[9] == "0" or not _conflicts(key.listen, address):
                continue
            if key.protocol is Protocol.TCP and cols[3] not in (_TCP_LISTEN, _TCP_CLOSE):
                continue
            found.append(int(cols[9]))
    return found


def processes(inodes: list[int], proc: Path = Path("/proc")) -> list[str]:
    """'pid 812 (sshd)' for each process holding one of the inodes, this process excluded."""
    wanted = {f"socket:[{i}]" for i in inodes}
    out: list[str] = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    comm = (entry / "comm").read_text().strip()
                    out.append(f"pid {entry.name} ({comm})")
                    break
        except OSError:
            continue  # gone, or not ours to read
    return sorted(out, key=lambda s: int(s.split()[1]))


def describe_holder(key: ProxyKey) -> str:
    """' (held by pid 812 (sshd))', ' (held by a socket of a process outside this PID
    namespace)', or '' when nothing is visible."""
    inodes = socket_inodes(key)
    if not inodes:
        return ""
    procs = processes(inodes)
    if procs:
        return f" (held by {', '.join(procs[:3])})"
    return f" (held by socket inode {inodes[0]}; its process is not visible from here)"
