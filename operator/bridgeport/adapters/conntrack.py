"""Forget UDP conntrack entries whose NAT decision is stale.

UDP has no handshake: an existing conntrack entry keeps steering a client's datagrams to the
old target (or to no target at all, if they arrived before the port was published) for as
long as the client keeps sending. After a UDP mapping changes, its entries are deleted so the
next datagram is NATed afresh.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import structlog
from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

log = structlog.get_logger(__name__)
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def forget_udp(ports: Iterable[tuple[int, int]]) -> int:
    """Delete UDP entries whose original destination port is one of (family, port)."""
    wanted = set(ports)
    if not wanted:
        return 0
    deleted = 0
    ct = Conntrack()
    try:
        for family in sorted({f for f, _ in wanted}):
            stale = [
                e
                for e in ct.dump_entries(
                    tuple_orig=NFCTAttrTuple(family=_FAMILY[family], proto=socket.IPPROTO_UDP)
                )
                if (family, e.tuple_orig.dport) in wanted
            ]
            for entry in stale:
                try:
                    ct.delete(entry)
                    deleted += 1
                except NetlinkError:
                    pass  # already gone: expired or deleted by someone else
    finally:
        ct.close()
    if deleted:
        log.info("stale UDP conntrack entries deleted", count=deleted)
    return deleted
