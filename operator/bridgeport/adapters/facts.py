"""Node facts from the kernel: local addresses, forwarding sysctls, interfaces that aren't ours."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from pyroute2 import DiagSocket
from pyroute2.netlink.exceptions import NetlinkError

from bridgeport.adapters import links
from bridgeport.core import assign
from bridgeport.core.plan import NodeFacts
from bridgeport.core.specs import BRIDGE_NETWORK, ResourceRef

log = structlog.get_logger(__name__)
# In a pod the host's /proc/sys/net may be mounted elsewhere (writable) by the chart.
PROC_SYS = Path(os.environ.get("BRIDGEPORT_PROC_SYS_NET", "/proc/sys/net"))
FORWARDING = ("ipv4/ip_forward", "ipv6/conf/all/forwarding")


def _sysctl_on(path: str) -> bool:
    try:
        return (PROC_SYS / path).read_text().strip() == "1"
    except OSError:
        return False


def enable_forwarding() -> None:
    """Turn IP forwarding on, as Docker does at start; only when configured to manage sysctls."""
    for path in FORWARDING:
        if not _sysctl_on(path):
            try:
                (PROC_SYS / path).write_text("1\n")
                log.info("sysctl enabled", sysctl=path.replace("/", "."))
            except OSError as exc:
                log.warning("cannot enable sysctl", sysctl=path.replace("/", "."), error=str(exc))


def ipv6_enabled() -> bool:
    """Whether a new bridge gets IPv6 (kind's ipv4 clusters, ipv6.disable=1 and Docker's
    IPv4-only containers turn it off; adding an address then fails with EACCES)."""
    return (PROC_SYS / "ipv6").is_dir() and not any(
        _sysctl_on(f"ipv6/conf/{c}/disable_ipv6") for c in ("all", "default")
    )


def converge_route_localnet(bridge: str, on: bool) -> None:
    """net.ipv4.conf.<bridge>.route_localnet for one of our bridges; written only when it
    differs. Raises OSError when it cannot be written."""
    path = PROC_SYS / "ipv4" / "conf" / bridge / "route_localnet"
    try:
        current = path.read_text().strip() == "1"
    except OSError:
        if not on:
            return  # unreadable: nothing we could have set there to undo
        raise
    if current != on:
        path.write_text("1\n" if on else "0\n")
        log.info("sysctl set", sysctl=f"net.ipv4.conf.{bridge}.route_localnet", value=int(on))


def port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range: where assigned host ports come from (Docker's too)."""
    try:
        low, high = (int(v) for v in (PROC_SYS / "ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return assign.DEFAULT_RANGE
    return (low, high) if 0 < low <= high < assign.PORTS else assign.DEFAULT_RANGE


def local_reserved_ports() -> frozenset[int]:
    """net.ipv4.ip_local_reserved_ports ("8080,9000-9010"): never assigned."""
    try:
        text = (PROC_SYS / "ipv4/ip_local_reserved_ports").read_text()
    except OSError:
        return frozenset()
    return frozenset(parse_port_list(text))


def parse_port_list(text: str) -> set[int]:
    ports: set[int] = set()
    for part in text.replace(" ", "").strip().split(","):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            continue
        ports.update(range(max(first, 1), min(last, assign.PORTS - 1) + 1))
    return ports


# /proc/net/<file>: TCP sockets in LISTEN (state 0A), every UDP socket.
_SOCKET_TABLES = (("TCP", ("tcp", "tcp6"), "0A"), ("UDP", ("udp", "udp6"), None))
_TCP_LISTEN = 1 << 10  # sock_diag state bitmask: TCP_LISTEN (10)
_ALL_STATES = 0xFFF


def listening_ports(proc_net: Path = Path("/proc/self/net")) -> dict[str, frozenset[int]]:
    """Per protocol, the local ports of this network namespace's listening sockets: TCP in
    LISTEN and every UDP socket through sock_diag (the kernel filters: a node with 100,000
    connections costs what one with ten does), else from /proc/net; SCTP endpoints from
    /proc/net/sctp/eps (present when the sctp module is loaded)."""
    try:
        out = _diag_ports()
    except (OSError, NetlinkError) as exc:
        log.debug("sock_diag unavailable; reading /proc/net", error=str(exc))
        out = _proc_ports(proc_net)
    try:  # "ENDPT SOCK STY SST HBKT LPORT ..."
        lines = (proc_net / "sctp/eps").read_text().splitlines()[1:]
        out["SCTP"] = frozenset(int(f[5]) for f in (ln.split() for ln in lines) if len(f) > 5)
    except (OSError, ValueError):
        out["SCTP"] = frozenset()
    return out


def _diag_ports() -> dict[str, frozenset[int]]:
    ports: dict[str, set[int]] = {"TCP": set(), "UDP": set()}
    with DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for name, protocol, states in (
                ("TCP", socket.IPPROTO_TCP, _TCP_LISTEN),
                ("UDP", socket.IPPROTO_UDP, _ALL_STATES),
            ):
                for msg in diag.get_sock_stats(family=family, states=states, protocol=protocol):
                    ports[name].add(int(msg["idiag_sport"]))
    return {k: frozenset(v) for k, v in ports.items()}


def _proc_ports(proc_net: Path) -> dict[str, frozenset[int]]:
    out: dict[str, frozenset[int]] = {}
    for protocol, files, state in _SOCKET_TABLES:
        ports: set[int] = set()
        for name in files:
            try:
                lines = (proc_net / name).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and (state is None or fields[3] == state):
                    ports.add(int(fields[1].rpartition(":")[2], 16))
        out[protocol] = frozenset(ports)
    return out


@dataclass(frozen=True)
class Links:
    """What the node's links say: netlink dumps, cached by the caller while its watch hears
    nothing (adapters/dataplane.py)."""

    ours: Mapping[str, str]  # our bridges: name -> network
    foreign: frozenset[str]  # every other interface
    addresses: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
    networks: frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network]


def read_links() -> Links:
    ours, foreign = links.inventory()
    return Links(
        ours,
        frozenset(foreign),
        frozenset(links.local_addresses()),
        frozenset(links.local_networks(set(ours))),
    )


def gather(name: str, labels: Mapping[str, str], known: Links | None = None) -> NodeFacts:
    """What the planner needs to know about this node, read from the kernel (the links
    from `known` when given; sysctls are always read anew)."""
    found = known if known is not None else read_links()
    return NodeFacts(
        name=name,
        labels=dict(labels),
        addresses=found.addresses,
        networks=found.networks,
        ipv4_forwarding=_sysctl_on("ipv4/ip_forward"),
        ipv6_forwarding=_sysctl_on("ipv6/conf/all/forwarding"),
        ipv6=ipv6_enabled(),
        foreign_interfaces=found.foreign,
        # Networks whose bridge exists: the incumbents when the agent remembers nothing else.
        incumbents=frozenset(ResourceRef(BRIDGE_NETWORK, "", n) for n in found.ours.values()),
        route_localnet=os.access(PROC_SYS / "ipv4/conf/all/route_localnet", os.W_OK),
        port_range=port_range(),
        local_reserved_ports=local_reserved_ports(),
    )
