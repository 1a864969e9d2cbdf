"""The node plan: everything one node should have, computed by the planner, consumed by adapters."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from bridgeport.core.specs import (
    GatewayMode,
    IPAddress,
    IPNetwork,
    Protocol,
    ResourceRef,
    address_text,
)


class State(StrEnum):
    APPLIED = "Applied"
    INACTIVE = "Inactive"
    CONFLICTED = "Conflicted"
    INVALID = "Invalid"
    FAILED = "Failed"  # valid and wanted here, but the kernel refused it (see reason)


@dataclass(frozen=True)
class Outcome:
    ref: ResourceRef
    generation: int
    state: State
    reason: str
    message: str = ""
    uid: str = ""
    # The host ports this node assigned (spec.hostPort absent), first and last; kept for the
    # life of the publication on this node (NodeFacts.remembered).
    assigned: tuple[int, int] | None = None


class Fwmark(NamedTuple):
    """A packet mark and mask (Docker 29's --bridge-accept-fwmark MARK[/MASK])."""

    mark: int
    mask: int = 0xFFFFFFFF

    @classmethod
    def parse(cls, text: str) -> Fwmark:
        """'0x10000', '65536/0xff0000': integers in any base Python reads; the mark must be
        non-zero under its mask (a zero mark would match every unmarked packet)."""
        mark_text, _, mask_text = text.strip().partition("/")
        try:
            mark = int(mark_text, 0)
            mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
        except ValueError:
            raise ValueError(f"{text!r} is not MARK[/MASK] (e.g. 0x10000/0x10000)") from None
        if not (0 <= mark <= 0xFFFFFFFF and 0 < mask <= 0xFFFFFFFF):
            raise ValueError(f"{text!r}: mark and mask are 32-bit, the mask non-zero")
        if mark == 0 or mark & ~mask:
            raise ValueError(f"{text!r}: the mark must be non-zero and inside the mask")
        return cls(mark, mask)

    def __str__(self) -> str:
        return f"{self.mark:#x}/{self.mask:#x}"


@dataclass(frozen=True)
class NodeFacts:
    """What the planner needs to know about the node; gathered by adapters, never by the core."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: frozenset[IPAddress] = frozenset()
    # Networks of the node's own addresses (not on our bridges): a bridge subnet overlapping
    # one is applied with a warning (SubnetOverlapsNode).
    networks: frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network] = frozenset()
    ipv4_forwarding: bool = True
    ipv6_forwarding: bool = True
    # False when new interfaces get no IPv6 (disable_ipv6, or no IPv6 in the kernel): a network's
    # subnet6 is then skipped on this node (reason IPv6Disabled), its IPv4 side still applied.
    ipv6: bool = True
    # Interfaces that exist and are not ours: a network asking for one of these names conflicts.
    foreign_interfaces: frozenset[str] = frozenset()
    # Publications whose port a host process already holds (found by the agent's bind).
    ports_in_use: Mapping[ResourceRef, str] = field(default_factory=dict)
    # The agent runs the userland proxy (not --no-proxy): traffic may be left to it. Without
    # it there are no listeners, and every captured address is held by a bare claim.
    userland_proxy: bool = True
    # Publications whose claim failed for another reason (EACCES, ...): never DNATed unheld.
    claims_failed: Mapping[ResourceRef, str] = field(default_factory=dict)
    # Host ports no publication may take on this node (the agent's own, kubelet's, ...).
    reserved_ports: frozenset[int] = frozenset()
    # Resources Applied on this node now: they keep their claims against any newcomer,
    # whatever its name or age (a working network never loses its subnet to a new one).
    incumbents: frozenset[ResourceRef] = frozenset()
    # Packets carrying this mark pass our forward drops (the node's --accept-fwmark).
    accept_mark: Fwmark | None = None
    # The agent may set route_localnet on its bridges (it manages sysctls and can write them):
    # what loopback: Kernel needs.
    route_localnet: bool = False
    # Assigned host ports (core/assign.py): the kernel's ephemeral range, its reserved ports,
    # the ports processes listen on per protocol ("TCP", ...), what this node assigned before
    # (ref -> (uid, first port)) and ports host processes took from an assignment.
    port_range: tuple[int, int] = (32768, 60999)
    local_reserved_ports: frozenset[int] = frozenset()
    listening: Mapping[str, frozenset[int]] = field(default_factory=dict)
    remembered: Mapping[ResourceRef, tuple[str, int]] = field(default_factory=dict)
    avoid: Mapping[ResourceRef, frozenset[int]] = field(default_factory=dict)
    # The allocation made from those (ref -> first port, or None: no free port); None until
    # the planner (or the incremental planner, once for all) makes it.
    assigned: Mapping[ResourceRef, int | None] | None = None

    def forwarding(self, family: int) -> bool:
        return self.ipv4_forwarding if family == 4 else self.ipv6_forwarding


@dataclass(frozen=True)
class BridgePlan:
    network: str
    name: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    mtu: int
    subnet: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network | None
    masquerade: bool
    internal: bool
    inter_container: bool
    shared: bool
    host_binding: IPAddress | None = None
    gateway_mode: GatewayMode = GatewayMode.NAT
    gateway_mode6: GatewayMode = GatewayMode.NAT
    trusted_interfaces: tuple[str, ...] = ()
    # SNAT source per family (egressAddress/6 present on this node), else masquerade.
    egress_address: ipaddress.IPv4Address | None = None
    egress_address6: ipaddress.IPv6Address | None = None
    # net.ipv4.conf.<bridge>.route_localnet=1: a loopback: Kernel publication targets it.
    route_localnet: bool = False

    def mode(self, family: int) -> GatewayMode:
        return self.gateway_mode if family == 4 else self.gateway_mode6

    def egress(self, family: int) -> IPAddress | None:
        return self.egress_address if family == 4 else self.egress_address6


@dataclass(frozen=True)
class Dnat:
    """host_ip:port[-port_end]/protocol -> target:target_port (ranges map 1:1)."""

    family: int
    host_ip: IPAddress | None
    protocol: Protocol
    port: int
    port_end: int
    target: IPAddress
    target_port: int
    owner: ResourceRef
    # A bridge with interContainer: false holding the target: traffic from it is not DNATed
    # but served by the proxy (bridged back between isolated ports, it would be dropped).
    proxy_from: str = ""

    @property
    def loopback(self) -> bool:
        """127.0.0.1 DNATed in the output path (loopback: Kernel); never from outside."""
        return self.host_ip is not None and self.host_ip.is_loopback

    @property
    def same_ports(self) -> bool:
        """A range that keeps its port numbers can live in an interval map as one element."""
        return self.port == self.target_port


@dataclass(frozen=True)
class RoutedPort:
    """A container port open to direct routing (gatewayMode routed): no NAT, no host port."""

    family: int
    target: IPAddress
    protocol: Protocol
    port: int
    port_end: int
    owner: ResourceRef


class ProxyKey(NamedTuple):
    """One socket's address. A NamedTuple: a sync hashes every key of 10,000 claims a few
    times, and a tuple's hash is C, a dataclass's Python."""

    listen: str  # the bound address as text ("0.0.0.0", "::", "127.0.0.1", ...)
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class ProxyPort:
    """A userland proxy listener the agent must run (docker-proxy's job)."""

    listen: IPAddress
    port: int
    protocol: Protocol
    target: IPAddress
    target_port: int
    owner: ResourceRef
    why: str  # loopback | loopback+link-local | icc-off | no-forwarding | always
    holds: bool = False  # also the claim on an address a DNAT captures (core/claims.py)
    # The socket's address, made once: plans sort by it and a sync hashes it a few times.
    key: ProxyKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "key", ProxyKey(address_text(self.listen), self.port, self.protocol)
        )


@dataclass(frozen=True)
class Claim:
    """A bound, non-listening socket the agent holds so nothing else can take the port
    (core/claims.py says when)."""

    listen: IPAddress
    port: int
    protocol: Protocol
    owner: ResourceRef
    # Made once: a steady-state sync of 10,000 claims is mostly this (str() of an address).
    key: ProxyKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "key", ProxyKey(address_text(self.listen), self.port, self.protocol)
        )


@dataclass(frozen=True)
class SourceRule:
    """Only `sources` may open connections to address:port-port_end/protocol (address None:
    every local address of the family): spec.allowedSources, for DNAT and proxy alike."""

    family: int
    address: IPAddress | None
    protocol: Protocol
    port: int
    port_end: int
    sources: tuple[IPNetwork, ...]  # of this family; empty: nobody of this family
    owner: ResourceRef


@dataclass(frozen=True)
class NodePlan:
    node: str
    bridges: tuple[BridgePlan, ...] = ()
    dnats: tuple[Dnat, ...] = ()
    proxies: tuple[ProxyPort, ...] = ()
    claims: tuple[Claim, ...] = ()
    source_rules: tuple[SourceRule, ...] = ()
    routed: tuple[RoutedPort, ...] = ()
    accept_mark: Fwmark | None = None
    outcomes: tuple[Outcome, ...] = ()
    errors: tuple[str, ...] = ()  # documents too broken to name a resource

    def outcome(self, ref: ResourceRef) -> Outcome | None:
        return next((o for o in self.outcomes if o.ref == ref), None)

    def udp_mappings(self) -> dict[tuple[int, int], set[tuple[str, str, int, str]]]:
        return udp_mappings(self.dnats)

    def counts(self) -> dict[str, int]:
        return count_states(self.outcomes)


def udp_mappings(dnats: Iterable[Dnat]) -> dict[tuple[int, int], set[tuple[str, str, int, str]]]:
    """(family, host port) -> {(host IP, target, target port, proxied bridge)} for every
    UDP DNAT port: when any of it changes, the port's conntrack entries are stale."""
    out: dict[tuple[int, int], set[tuple[str, str, int, str]]] = {}
    for d in dnats:
        if d.protocol is Protocol.UDP:
            for i in range(d.port_end - d.port + 1):
                out.setdefault((d.family, d.port + i), set()).add(
                    (str(d.host_ip or "*"), str(d.target), d.target_port + i, d.proxy_from)
                )
    return out


def count_states(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Outcomes per state, every state present (zero included)."""
    by_state = {s.value: 0 for s in State}
    for o in outcomes:
        by_state[o.state.value] += 1
    return by_state
