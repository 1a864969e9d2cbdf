"""The planner: (resources, node facts) -> NodePlan. Pure and deterministic.

All of bridgeport's semantics live here: which resources apply on this node, who wins a
conflict (the oldest, ties by namespace/name), which ports the kernel NATs and which need the
userland proxy. Adapters only carry the result out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from bridgeport.core.plan import (
    BridgePlan,
    Dnat,
    NodeFacts,
    NodePlan,
    Outcome,
    ProxyPort,
    State,
)
from bridgeport.core.specs import (
    BridgeNetwork,
    InvalidResource,
    IPAddress,
    Isolation,
    LoopbackPolicy,
    ParseResult,
    PortPublication,
    Protocol,
    ResourceRef,
    hostport,
)

WILDCARD4 = ipaddress.IPv4Address("0.0.0.0")
WILDCARD6 = ipaddress.IPv6Address("::")
LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK6 = ipaddress.IPv6Address("::1")


@dataclass(frozen=True)
class _Verdict:
    state: State
    reason: str
    message: str


def plan(resources: Iterable[ParseResult], facts: NodeFacts) -> NodePlan:
    """Compute the node's whole desired state. Input order never changes the result."""
    outcomes: dict[ResourceRef, Outcome] = {}
    errors: list[str] = []
    chosen: dict[ResourceRef, ParseResult] = {}
    for res in resources:
        ref = res.ref if isinstance(res, InvalidResource) else res.meta.ref
        if ref is None:
            assert isinstance(res, InvalidResource)  # only a document without identity
            errors.append(res.message)
        elif ref in chosen:
            errors.append(f"{ref}: defined more than once; one definition is used")
            chosen[ref] = min(chosen[ref], res, key=_duplicate_order)
        else:
            chosen[ref] = res
    networks: list[BridgeNetwork] = []
    publications: list[PortPublication] = []
    for ref, res in chosen.items():
        if isinstance(res, InvalidResource):
            outcomes[ref] = Outcome(ref, res.generation, State.INVALID, "InvalidSpec",
                                    res.message, res.uid)
        elif isinstance(res, BridgeNetwork):
            networks.append(res)
        else:
            publications.append(res)
    networks.sort(key=lambda n: n.meta.age_key)
    publications.sort(key=lambda p: p.meta.age_key)

    bridges = _plan_networks(networks, facts, outcomes)
    applied_networks = {b.network: b for b in bridges}
    all_networks = {n.name: n for n in networks}
    dnats, proxies = _plan_publications(
        publications, facts, applied_networks, all_networks, outcomes
    )
    return NodePlan(
        node=facts.name,
        bridges=tuple(sorted(bridges, key=lambda b: b.name)),
        dnats=tuple(sorted(dnats, key=_dnat_order)),
        proxies=tuple(sorted(proxies, key=lambda p: (p.key, _addr_order(p.target)))),
        outcomes=tuple(sorted(outcomes.values(), key=lambda o: o.ref)),
        errors=tuple(sorted(errors)),
    )


def _duplicate_order(res: ParseResult) -> tuple[int, tuple[str, str, str], str]:
    """Which of two definitions of one resource is used: valid, then oldest, then by content."""
    if isinstance(res, InvalidResource):
        return (1, ("", "", ""), res.message)
    return (0, res.meta.age_key, repr(res))


def _plan_networks(networks: list[BridgeNetwork], facts: NodeFacts,
                   outcomes: dict[ResourceRef, Outcome]) -> list[BridgePlan]:
    accepted: list[BridgeNetwork] = []
    for net in networks:
        verdict = _network_verdict(net, facts, accepted)
        if verdict is None:
            accepted.append(net)
            verdict = _Verdict(State.APPLIED, "Programmed", f"bridge {net.bridge} {net.subnet}")
        outcomes[net.meta.ref] = Outcome(net.meta.ref, net.meta.generation, *_fields(verdict),
                                         net.meta.uid)
    return [_bridge_plan(n) for n in accepted]


def _network_verdict(net: BridgeNetwork, facts: NodeFacts,
                     accepted: list[BridgeNetwork]) -> _Verdict | None:
    if not net.node_selector.matches(facts.labels):
        return _Verdict(State.INACTIVE, "NodeSelectorMismatch",
                        f"nodeSelector {net.node_selector} does not match node {facts.name}")
    if net.bridge in facts.foreign_interfaces:
        return _Verdict(State.CONFLICTED, "InterfaceInUse",
                        f"interface {net.bridge} already exists on node {facts.name} and is not "
                        "managed by bridgeport; it is left alone")
    for winner in accepted:
        if winner.bridge == net.bridge:
            return _Verdict(State.CONFLICTED, "BridgeNameInUse",
                            f"bridge {net.bridge} is already used by {winner.meta.ref}")
        if winner.subnet.overlaps(net.subnet):
            return _Verdict(State.CONFLICTED, "SubnetOverlap",
                            f"subnet {net.subnet} overlaps {winner.subnet} of {winner.meta.ref}")
        if net.subnet6 and winner.subnet6 and winner.subnet6.overlaps(net.subnet6):
            return _Verdict(State.CONFLICTED, "SubnetOverlap",
                            f"subnet6 {net.subnet6} overlaps {winner.subnet6} of "
                            f"{winner.meta.ref}")
    return None


def _bridge_plan(net: BridgeNetwork) -> BridgePlan:
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
        ipaddress.IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}")
    ]
    if net.subnet6 is not None and net.gateway6 is not None:
        addresses.append(ipaddress.IPv6Interface(f"{net.gateway6}/{net.subnet6.prefixlen}"))
    return BridgePlan(
        network=net.name,
        name=net.bridge,
        addresses=tuple(addresses),
        mtu=net.mtu,
        subnet=net.subnet,
        subnet6=net.subnet6,
        masquerade=net.masquerade,
        internal=net.internal,
        inter_container=net.inter_container,
        shared=net.isolation is Isolation.SHARED,
    )


def _plan_publications(
    publications: list[PortPublication],
    facts: NodeFacts,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
    outcomes: dict[ResourceRef, Outcome],
) -> tuple[list[Dnat], list[ProxyPort]]:
    accepted = _Claims()
    dnats: list[Dnat] = []
    proxies: list[ProxyPort] = []
    for pub in publications:
        ref = pub.meta.ref
        network = _target_network(pub, applied)
        verdict = _publication_verdict(pub, facts, network, applied, all_networks, accepted)
        if verdict is None:
            pub_dnats = _dnats(pub, facts)
            pub_proxies = _proxies(pub, facts)
            if not pub_dnats and not pub_proxies:
                verdict = _unserved(pub, facts)
            else:
                accepted.add(pub)
                dnats += pub_dnats
                proxies += pub_proxies
                verdict = _Verdict(State.APPLIED, "Programmed",
                                   _applied_message(pub, pub_dnats, pub_proxies))
        outcomes[ref] = Outcome(ref, pub.meta.generation, *_fields(verdict), pub.meta.uid)
    return dnats, proxies


def _target_network(pub: PortPublication, applied: dict[str, BridgePlan]) -> BridgePlan | None:
    """The named network, or else the applied network whose subnet holds the target."""
    if pub.network is not None:
        return applied.get(pub.network)
    for bridge in applied.values():
        subnet = bridge.subnet if pub.target_address.version == 4 else bridge.subnet6
        if subnet is not None and pub.target_address in subnet:
            return bridge
    return None


def _publication_verdict(
    pub: PortPublication,
    facts: NodeFacts,
    network: BridgePlan | None,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
    accepted: _Claims,
) -> _Verdict | None:
    if pub.network is not None:
        named = all_networks.get(pub.network)
        if named is None:
            return _Verdict(State.INVALID, "NetworkNotFound",
                            f"{pub.meta.ref}: spec.network: BridgeNetwork {pub.network!r} "
                            "does not exist")
        if not named.contains(pub.target_address):
            subnets = " / ".join(str(s) for s in (named.subnet, named.subnet6) if s)
            return _Verdict(State.INVALID, "TargetOutsideNetwork",
                            f"{pub.meta.ref}: spec.target.address: {pub.target_address} is not "
                            f"inside BridgeNetwork {pub.network} ({subnets})")
    if not pub.node_selector.matches(facts.labels):
        return _Verdict(State.INACTIVE, "NodeSelectorMismatch",
                        f"nodeSelector {pub.node_selector} does not match node {facts.name}")
    if pub.network is not None and pub.network not in applied:
        return _Verdict(State.INACTIVE, "NetworkNotReady",
                        f"BridgeNetwork {pub.network} is not applied on node {facts.name}")
    if network is not None and network.internal:
        return _Verdict(State.INACTIVE, "InternalNetwork",
                        f"BridgeNetwork {network.network} is internal: nothing is published "
                        "into it")
    if pub.host_ip is not None and not pub.host_ip.is_loopback and (
        pub.host_ip not in facts.addresses
    ):
        return _Verdict(State.INACTIVE, "HostIPNotLocal",
                        f"hostIP {pub.host_ip} is not an address of node {facts.name}")
    winner = accepted.first_overlap(pub)
    if winner is not None:
        return _Verdict(State.CONFLICTED, "PortConflict",
                        f"{pub.describe()} overlaps {winner.describe()} published by "
                        f"{winner.meta.ref}, which is older and wins")
    in_use = facts.ports_in_use.get(pub.meta.ref)
    if in_use is not None:
        return _Verdict(State.CONFLICTED, "PortInUse", in_use)
    return None


class _Claims:
    """Accepted publications indexed by (protocol, port), so checking a claim is O(ports)."""

    def __init__(self) -> None:
        self.by_port: dict[tuple[str, int], list[PortPublication]] = {}
        self.ranges: list[PortPublication] = []

    def add(self, pub: PortPublication) -> None:
        if pub.port_count == 1:
            self.by_port.setdefault((pub.protocol.value, pub.host_port), []).append(pub)
        else:
            self.ranges.append(pub)

    def first_overlap(self, pub: PortPublication) -> PortPublication | None:
        hits = [w for w in self.ranges if _claims_overlap(w, pub)]
        for port in range(pub.host_port, pub.host_port_end + 1):
            hits += [w for w in self.by_port.get((pub.protocol.value, port), ())
                     if _claims_overlap(w, pub)]
        return min(hits, key=lambda w: w.meta.age_key) if hits else None


def _claims_overlap(a: PortPublication, b: PortPublication) -> bool:
    """Same protocol, overlapping ports, and the same host IP (a wildcard overlaps every IP)."""
    if a.protocol != b.protocol:
        return False
    if a.host_port > b.host_port_end or b.host_port > a.host_port_end:
        return False
    return a.host_ip is None or b.host_ip is None or a.host_ip == b.host_ip


def _dnats(pub: PortPublication, facts: NodeFacts) -> list[Dnat]:
    """Kernel NAT, unless the host IP is loopback or the family cannot forward."""
    if pub.host_ip is not None and pub.host_ip.is_loopback:
        return []
    if not facts.forwarding(pub.family):
        return []
    return [Dnat(pub.family, pub.host_ip, pub.protocol, pub.host_port, pub.host_port_end,
                 pub.target_address, pub.target_port, pub.meta.ref)]


def _proxies(pub: PortPublication, facts: NodeFacts) -> list[ProxyPort]:
    listens: list[tuple[IPAddress, str]] = []
    if pub.loopback is LoopbackPolicy.NEVER or pub.protocol is Protocol.SCTP:
        return []  # the userland proxy speaks TCP and UDP
    wildcards: list[IPAddress] = [WILDCARD4, WILDCARD6]
    if pub.loopback is LoopbackPolicy.ALWAYS:
        listens = [(a, "always") for a in ([pub.host_ip] if pub.host_ip else wildcards)]
    elif pub.host_ip is not None and pub.host_ip.is_loopback:
        listens = [(pub.host_ip, "loopback")]
    elif not facts.forwarding(pub.family):
        listens = [(a, "no-forwarding") for a in ([pub.host_ip] if pub.host_ip else wildcards)]
    elif pub.host_ip is None:
        listens = [(LOOPBACK4, "loopback"), (LOOPBACK6, "loopback")]
    return [
        ProxyPort(addr, port, pub.protocol, pub.target_address,
                  pub.target_port + (port - pub.host_port), pub.meta.ref, why)
        for addr, why in listens
        for port in range(pub.host_port, pub.host_port_end + 1)
    ]


def _unserved(pub: PortPublication, facts: NodeFacts) -> _Verdict:
    if pub.host_ip is not None and pub.host_ip.is_loopback:
        return _Verdict(State.INACTIVE, "LoopbackNeedsProxy",
                        f"hostIP {pub.host_ip} is only reachable through the userland proxy, "
                        "and spec.loopback is Never")
    return _Verdict(State.INACTIVE, "IPForwardingDisabled",
                    f"IPv{pub.family} forwarding is off on node {facts.name} and spec.loopback "
                    "is Never, so nothing can serve this port")


def _applied_message(pub: PortPublication, dnats: list[Dnat], proxies: list[ProxyPort]) -> str:
    address = hostport(pub.target_address)
    target = (f"{address}:{pub.target_port}" if pub.port_count == 1 else
              f"{address}:{pub.target_port}-{pub.target_port + pub.port_count - 1}")
    via = []
    if dnats:
        via.append("kernel DNAT")
    if proxies:
        via.append("proxy on " + ", ".join(sorted({str(p.listen) for p in proxies})))
    return f"{pub.describe()} -> {target} via {' and '.join(via)}"


def _fields(v: _Verdict) -> tuple[State, str, str]:
    return v.state, v.reason, v.message


def _addr_order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


def _dnat_order(d: Dnat) -> tuple[int, tuple[int, int], str, int]:
    host = _addr_order(d.host_ip) if d.host_ip else (0, 0)
    return (d.family, host, d.protocol.value, d.port)
