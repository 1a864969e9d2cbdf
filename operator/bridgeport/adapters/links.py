"""pyroute2 adapter: our bridges, their addresses, MTU and ports.

A bridge is ours when its ifalias carries our marker; nothing else is ever modified or deleted.
Ports (attached by whoever creates the containers) get hairpin mode, so a container can reach
its own published port, and port isolation when the network has interContainer: false.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridgeport.core.plan import BridgePlan
from bridgeport.core.settle import KeptBridge, LinkFailure

log = structlog.get_logger(__name__)

MARKER = "bridgeport:"
HAIRPIN_ON = 1
IFA_F_NODAD = 0x02
AF_INET, AF_INET6 = 2, 10


Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _alias(link: Any) -> str:
    return str(link.get_attr("IFLA_IFALIAS") or "")


def inventory() -> tuple[dict[str, str], set[str]]:
    """(our bridges: name -> network, every other interface name) in this namespace."""
    ours: dict[str, str] = {}
    foreign: set[str] = set()
    with _ipr() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            alias = _alias(link)
            if alias.startswith(MARKER) and _kind(link) == "bridge":
                ours[name] = alias[len(MARKER) :]
            else:
                foreign.add(name)
    return ours, foreign


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def local_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    with _ipr() as ipr:
        return {
            ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr()
            if a.get_attr("IFA_ADDRESS")
        }


def local_networks(skip: Collection[str]) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Networks of this namespace's addresses, except on the interfaces in `skip` (our
    bridges), loopback and link-local: what a bridge subnet must not shadow."""
    with _ipr() as ipr:
        skipped = {
            link["index"] for link in ipr.get_links() if link.get_attr("IFLA_IFNAME") in skip
        }
        out: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        for a in ipr.get_addr():
            address = a.get_attr("IFA_ADDRESS")
            if not address or a["index"] in skipped:
                continue
            iface = ipaddress.ip_interface(f"{address}/{a['prefixlen']}")
            if not (iface.ip.is_loopback or iface.ip.is_link_local):
                out.add(iface.network)
        return out


def converge(bridges: Sequence[BridgePlan]) -> list[LinkFailure]:
    """Create or update every planned bridge. Never raises for one bridge; reports instead."""
    failures = []
    with _ipr() as ipr:
        for plan in bridges:
            try:
                _converge_one(ipr, plan)
            except (NetlinkError, OSError, ValueError) as exc:
                log.error(
                    "bridge converge failed", bridge=plan.name, network=plan.network, error=str(exc)
                )
                failures.append(LinkFailure(plan.network, plan.name, str(exc)))
    return failures


def _converge_one(ipr: Any, plan: BridgePlan) -> None:
    marker = MARKER + plan.network
    found = ipr.link_lookup(ifname=plan.name)
    created = not found
    if created:
        ipr.link("add", ifname=plan.name, kind="bridge")
        found = ipr.link_lookup(ifname=plan.name)
        log.info("bridge created", bridge=plan.name, network=plan.network)
    index = found[0]
    link = ipr.get_links(index)[0]
    if _alias(link) != marker:
        if not created and not (_alias(link).startswith(MARKER) and _kind(link) == "bridge"):
            raise ValueError(f"interface {plan.name} exists and is not managed by bridgeport")
        ipr.link("set", index=index, ifalias=marker)
    if link.get_attr("IFLA_MTU") != plan.mtu:
        ipr.link("set", index=index, mtu=plan.mtu)
    _converge_addresses(ipr, index, plan.addresses)
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=index, state="up")
    _converge_ports(ipr, index, isolated=not plan.inter_container)


def _converge_addresses(ipr: Any, index: int, wanted: Iterable[Interface]) -> None:
    want = set(wanted)
    have: set[Interface] = set()
    for a in ipr.get_addr(index=index):
        iface = ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        if isinstance(iface, ipaddress.IPv6Interface) and iface.ip.is_link_local:
            continue  # the kernel's own link-local address
        have.add(iface)
    for iface in have - want:
        ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    for iface in sorted(want - have, key=str):
        extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
        ipr.addr(
            "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra
        )


def _converge_ports(ipr: Any, bridge_index: int, isolated: bool) -> None:
    want = (HAIRPIN_ON, int(isolated))
    for port in ipr.get_links(master=bridge_index) if bridge_index else []:
        if port.get_attr("IFLA_MASTER") != bridge_index:
            continue
        # Write only what differs: each write is a link event for every watcher, our own too.
        if port_flags(port) != want:
            ipr.brport("set", index=port["index"], mode=want[0], isolated=want[1])


def port_flags(link: Any) -> tuple[int, int] | None:
    """(hairpin mode, isolated) of a bridge port, from whichever part of the message has them:
    IFLA_PROTINFO in bridge-family messages, the linkinfo's slave data in the others (a plain
    link dump, which is what `get_links` returns)."""
    data = link.get_attr("IFLA_PROTINFO")
    if data is None:
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_SLAVE_KIND") != "bridge":
            return None
        data = info.get_attr("IFLA_INFO_SLAVE_DATA")
    if data is None:
        return None
    mode, isolated = data.get_attr("IFLA_BRPORT_MODE"), data.get_attr("IFLA_BRPORT_ISOLATED")
    if mode is None or isolated is None:
        return None
    return int(mode), int(isolated)


def remove_stale(
    wanted: Iterable[str], protect: Collection[str] = ()
) -> tuple[list[str], list[KeptBridge]]:
    """Delete our bridges that are no longer planned; returns their names. A bridge of a
    network in `protect` (its resource still exists) that has ports attached is kept and
    returned instead: deleting it would detach every container, and nothing re-attaches them."""
    keep = set(wanted)
    removed: list[str] = []
    kept: list[KeptBridge] = []
    ours, _ = inventory()
    with _ipr() as ipr:
        for name in sorted(set(ours) - keep):
            found = ipr.link_lookup(ifname=name)
            if not found or not _alias(ipr.get_links(found[0])[0]).startswith(MARKER):
                continue
            if ours[name] in protect:
                ports = [
                    p
                    for p in ipr.get_links(master=found[0])
                    if p.get_attr("IFLA_MASTER") == found[0]
                ]
                if ports:
                    kept.append(KeptBridge(ours[name], name, len(ports)))
                    continue
            ipr.link("del", index=found[0])
            removed.append(name)
            log.info("bridge removed", bridge=name, network=ours[name])
    return removed, kept
