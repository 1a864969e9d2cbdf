"""The planner: (resources, node facts) -> NodePlan. Pure and deterministic.

All of bridgeport's semantics live here: which resources apply on this node, who wins a
conflict (what is Applied here already, then the oldest, ties by namespace/name), which ports
the kernel NATs and which need the userland proxy. Adapters only carry the result out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from operator import attrgetter
from typing import NamedTuple, TypeVar

from bridgeport.core import assign
from bridgeport.core import claims as port_claims
from bridgeport.core.plan import (
    BridgePlan,
    Claim,
    Dnat,
    NodeFacts,
    NodePlan,
    Outcome,
    ProxyPort,
    RoutedPort,
    SourceRule,
    State,
)
from bridgeport.core.specs import (
    BridgeNetwork,
    GatewayMode,
    InvalidResource,
    IPAddress,
    Isolation,
    LoopbackPolicy,
    ParseResult,
    PortPublication,
    Protocol,
    ResourceRef,
    address_text,
    hostport,
)

_A = TypeVar("_A", ipaddress.IPv4Address, ipaddress.IPv6Address)
WILDCARD4 = ipaddress.IPv4Address("0.0.0.0")
WILDCARD6 = ipaddress.IPv6Address("::")
LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK6 = ipaddress.IPv6Address("::1")


class _Verdict(NamedTuple):  # a tuple: one is made for every resource
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
            outcomes[ref] = Outcome(
                ref, res.generation, State.INVALID, "InvalidSpec", res.message, res.uid
            )
        elif isinstance(res, BridgeNetwork):
            networks.append(res)
        else:
            publications.append(res)
    networks.sort(key=lambda n: _claim_order(n, facts))
    publications.sort(key=lambda p: _claim_order(p, facts))

    bridges = _plan_networks(networks, facts, outcomes)
    applied_networks = {b.network: b for b in bridges}
    all_networks = {n.name: n for n in networks}
    if facts.assigned is None and any(p.assign is not None for p in publications):
        facts = replace(
            facts, assigned=_allocate(publications, facts, applied_networks, all_networks)
        )
    publications = [resolved(p, facts) for p in publications]
    dnats, proxies, claims, sources, routed = _plan_publications(
        publications, facts, applied_networks, all_networks, outcomes
    )
    bridges = _with_route_localnet(bridges, dnats)
    return NodePlan(
        node=facts.name,
        bridges=tuple(sorted(bridges, key=lambda b: b.name)),
        dnats=tuple(sorted(dnats, key=_dnat_order)),
        proxies=tuple(sorted(proxies, key=lambda p: (p.key, _addr_order(p.target)))),
        claims=tuple(sorted(claims, key=attrgetter("key"))),
        source_rules=tuple(sources),
        routed=tuple(sorted(routed, key=_routed_order)),
        accept_mark=facts.accept_mark,
        outcomes=tuple(sorted(outcomes.values(), key=attrgetter("ref"))),
        errors=tuple(sorted(errors)),
    )


class PortVerdicts:
    """Which assigned publications take a port here, remembered by publication object for as
    long as the node's facts and networks stay the same (the incremental planner keeps one:
    a reconcile then re-checks only the publications that changed)."""

    def __init__(self) -> None:
        self.context: object = None
        self.wants: dict[ResourceRef, tuple[PortPublication, bool]] = {}


def allocate_ports(
    resources: Iterable[ParseResult], facts: NodeFacts, cache: PortVerdicts | None = None
) -> dict[ResourceRef, int | None]:
    """The node's assigned host ports for these resources (what plan() would make): the
    incremental planner makes it once for all its partial plans."""
    resources = list(resources)
    if not any(isinstance(r, PortPublication) and r.assign is not None for r in resources):
        return {}  # the common case costs one pass
    chosen: dict[ResourceRef, BridgeNetwork | PortPublication] = {}
    for r in resources:  # the definition plan() uses when one is given twice
        if not isinstance(r, InvalidResource):
            old = chosen.get(r.meta.ref)
            chosen[r.meta.ref] = r if old is None else min(old, r, key=_duplicate_order)
    networks = sorted(
        (r for r in chosen.values() if isinstance(r, BridgeNetwork)),
        key=lambda n: _claim_order(n, facts),
    )
    pubs = sorted(
        (r for r in chosen.values() if isinstance(r, PortPublication)),
        key=lambda p: _claim_order(p, facts),
    )
    bridges = _plan_networks(networks, facts, {})
    if cache is not None:
        context = (
            replace(facts, listening={}, remembered={}, avoid={}, assigned=None),
            tuple(networks),
        )
        if cache.context != context:
            cache.context, cache.wants = context, {}
    return _allocate(
        pubs, facts, {b.network: b for b in bridges}, {n.name: n for n in networks}, cache
    )


def _allocate(
    pubs: list[PortPublication],
    facts: NodeFacts,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
    cache: PortVerdicts | None = None,
) -> dict[ResourceRef, int | None]:
    """Ports for the publications that want an assignment on this node, in claim order."""
    wants = cache.wants if cache is not None else {}
    items: list[assign.Request | assign.Fixed] = []
    start, end = facts.port_range
    for pub in pubs:
        if pub.assign is None:
            if pub.node_selector.matches(facts.labels):  # cheap, and errs on the safe side
                items.append(assign.Fixed(pub.protocol.value, pub.host_port, pub.host_port_end))
            continue
        ref = pub.meta.ref
        known = wants.get(ref)
        if known is None or known[0] is not pub:
            known = wants[ref] = (pub, _port_verdict(pub, facts, applied, all_networks) is None)
        if not known[1]:
            continue
        uid, previous = facts.remembered.get(ref, (pub.meta.uid, None))
        lo, hi = (
            (pub.assign.start, pub.assign.end)
            if pub.assign.start is not None and pub.assign.end is not None
            else (start, end)
        )
        items.append(
            assign.Request(
                ref,
                pub.protocol.value,
                lo,
                hi,
                pub.assign.count,
                previous if uid == pub.meta.uid else None,
                facts.avoid.get(ref, frozenset()),
            )
        )
    return assign.allocate(
        items, facts.reserved_ports | facts.local_reserved_ports, facts.listening
    )


def _port_verdict(
    declared: PortPublication,
    facts: NodeFacts,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
) -> _Verdict | None:
    """Why this publication takes no host port on this node (the verdicts that come before
    any port is looked at), or None when it does. A routed network ignores host ports."""
    nets = _target_networks(declared, applied)
    network = nets[declared.target_address.version]
    nat_part, routed_ports = _split_routed(declared, nets)
    if nat_part is None:
        return _Verdict(State.APPLIED, "Programmed", _routed_message(routed_ports, network))
    pub, verdict, _ = _host_binding(nat_part, network)
    verdict = verdict or _publication_verdict(
        pub, facts, nets, applied, all_networks, _Claims(), routed_only=True
    )
    if verdict is not None:
        return verdict
    host = pub.specific_host_ip
    if host is not None and not host.is_loopback and host not in facts.addresses:
        return _Verdict(
            State.INACTIVE,
            "HostIPNotLocal",
            f"hostIP {host} is not an address of node {facts.name}",
        )
    return None


def resolved(pub: PortPublication, facts: NodeFacts) -> PortPublication:
    """An assigned publication with the ports this node picked (unresolved when none)."""
    first = (facts.assigned or {}).get(pub.meta.ref) if pub.assign is not None else None
    if first is None or pub.assign is None:
        return pub
    return replace(pub, host_port=first, host_port_end=first + pub.assign.count - 1)


def _no_free_port(pub: PortPublication, facts: NodeFacts) -> _Verdict:
    assert pub.assign is not None
    if pub.assign.start is None:
        lo, hi = facts.port_range
        where = f"the ephemeral range {lo}-{hi} (net.ipv4.ip_local_port_range)"
    else:
        where = f"{pub.assign.start}-{pub.assign.end}"
    run = "free port" if pub.assign.count == 1 else f"{pub.assign.count} free consecutive ports"
    return _Verdict(
        State.CONFLICTED,
        "NoFreePort",
        f"no {run} for {pub.protocol.value} in {where} on node {facts.name}: "
        "every port there is reserved (ip_local_reserved_ports, the agent's "
        "--reserved-ports), in use by a host process or held by another "
        "publication",
    )


def _claim_order(
    res: BridgeNetwork | PortPublication, facts: NodeFacts
) -> tuple[bool, tuple[str, str, str]]:
    """Who claims first: incumbents (Applied here now), then the oldest, then by name."""
    return (res.meta.ref not in facts.incumbents, res.meta.age_key)


def _duplicate_order(res: ParseResult) -> tuple[int, tuple[str, str, str], str]:
    """Which of two definitions of one resource is used: valid, then oldest, then by content."""
    if isinstance(res, InvalidResource):
        return (1, ("", "", ""), res.message)
    return (0, res.meta.age_key, repr(res))


def network_outcomes(
    networks: Iterable[BridgeNetwork], facts: NodeFacts
) -> dict[ResourceRef, Outcome]:
    """The networks' outcomes as plan() makes them (of one definition each): they depend on
    the networks and the node's facts alone."""
    outcomes: dict[ResourceRef, Outcome] = {}
    _plan_networks(sorted(networks, key=lambda n: _claim_order(n, facts)), facts, outcomes)
    return outcomes


def _plan_networks(
    networks: list[BridgeNetwork], facts: NodeFacts, outcomes: dict[ResourceRef, Outcome]
) -> list[BridgePlan]:
    accepted: list[BridgeNetwork] = []
    for net in networks:
        verdict = _network_verdict(net, facts, accepted)
        if verdict is None:
            accepted.append(net)
            verdict = _applied_network(net, facts)
        outcomes[net.meta.ref] = Outcome(net.meta.ref, net.meta.generation, *verdict, net.meta.uid)
    return [_bridge_plan(n, facts) for n in accepted]


def _applied_network(net: BridgeNetwork, facts: NodeFacts) -> _Verdict:
    """Programmed; IPv6Disabled when the node cannot take subnet6; SubnetOverlapsNode (a
    warning) when a subnet overlaps a network of the node's own addresses (traffic to those
    hosts may now go into the bridge)."""
    reason, message = "Programmed", _network_message(net, facts)
    if net.subnet6 is not None and not facts.ipv6:
        reason = "IPv6Disabled"
        message += f"; subnet6 {net.subnet6} not applied: IPv6 is disabled on node {facts.name}"
    for node_net in sorted(facts.networks, key=lambda n: (n.version, n)):
        subnet = net.subnet if node_net.version == 4 else (net.subnet6 if facts.ipv6 else None)
        if subnet is not None and subnet.overlaps(node_net):
            return _Verdict(
                State.APPLIED,
                "SubnetOverlapsNode",
                f"{message}; warning: subnet {subnet} overlaps {node_net}, a "
                f"network of node {facts.name}'s own addresses: hosts there may "
                "become unreachable from this node",
            )
    return _Verdict(State.APPLIED, reason, message)


def _network_verdict(
    net: BridgeNetwork, facts: NodeFacts, accepted: list[BridgeNetwork]
) -> _Verdict | None:
    if not net.node_selector.matches(facts.labels):
        return _Verdict(
            State.INACTIVE,
            "NodeSelectorMismatch",
            f"nodeSelector {net.node_selector} does not match node {facts.name}",
        )
    if net.bridge in facts.foreign_interfaces:
        return _Verdict(
            State.CONFLICTED,
            "InterfaceInUse",
            f"interface {net.bridge} already exists on node {facts.name} and is not "
            "managed by bridgeport; it is left alone",
        )
    for winner in accepted:
        if winner.bridge == net.bridge:
            return _Verdict(
                State.CONFLICTED,
                "BridgeNameInUse",
                f"bridge {net.bridge} is already used by {winner.meta.ref}",
            )
        if winner.subnet.overlaps(net.subnet):
            return _Verdict(
                State.CONFLICTED,
                "SubnetOverlap",
                f"subnet {net.subnet} overlaps {winner.subnet} of {winner.meta.ref}",
            )
        if net.subnet6 and winner.subnet6 and winner.subnet6.overlaps(net.subnet6):
            return _Verdict(
                State.CONFLICTED,
                "SubnetOverlap",
                f"subnet6 {net.subnet6} overlaps {winner.subnet6} of {winner.meta.ref}",
            )
    return None


def _network_message(net: BridgeNetwork, facts: NodeFacts) -> str:
    notes = [
        f"gatewayMode{suffix} {mode}"
        for suffix, mode in (("", net.gateway_mode), ("6", net.gateway_mode6))
        if mode is not GatewayMode.NAT
    ]
    for suffix, address in (("", net.egress_address), ("6", net.egress_address6)):
        if address is not None:
            notes.append(
                f"egress SNAT to {address}"
                if address in facts.addresses
                else f"egressAddress{suffix} {address} is inactive: not an address of node "
                f"{facts.name}, masquerading instead"
            )
    return f"bridge {net.bridge} {net.subnet}" + (f" ({'; '.join(notes)})" if notes else "")


def _local(address: _A | None, facts: NodeFacts) -> _A | None:
    return address if address is not None and address in facts.addresses else None


def _bridge_plan(net: BridgeNetwork, facts: NodeFacts) -> BridgePlan:
    """gatewayMode isolated: no address of that family on the bridge (Docker's isolated)."""
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    if net.gateway_mode is not GatewayMode.ISOLATED:
        addresses.append(ipaddress.IPv4Interface(f"{net.gateway}/{net.subnet.prefixlen}"))
    subnet6 = net.subnet6 if facts.ipv6 else None
    if (
        subnet6 is not None
        and net.gateway6 is not None
        and (net.gateway_mode6 is not GatewayMode.ISOLATED)
    ):
        addresses.append(ipaddress.IPv6Interface(f"{net.gateway6}/{subnet6.prefixlen}"))
    return BridgePlan(
        network=net.name,
        name=net.bridge,
        addresses=tuple(addresses),
        mtu=net.mtu,
        subnet=net.subnet,
        subnet6=subnet6,
        masquerade=net.masquerade,
        internal=net.internal,
        inter_container=net.inter_container,
        shared=net.isolation is Isolation.SHARED,
        host_binding=net.host_binding,
        gateway_mode=net.gateway_mode,
        gateway_mode6=net.gateway_mode6,
        trusted_interfaces=net.trusted_interfaces,
        egress_address=_local(net.egress_address, facts),
        egress_address6=_local(net.egress_address6, facts),
    )


def _plan_publications(
    publications: list[PortPublication],
    facts: NodeFacts,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
    outcomes: dict[ResourceRef, Outcome],
) -> tuple[list[Dnat], list[ProxyPort], list[Claim], list[SourceRule], list[RoutedPort]]:
    accepted = _Claims()
    sources: list[SourceRule] = []
    dnats: list[Dnat] = []
    proxies: list[ProxyPort] = []
    claims: list[Claim] = []
    routed: list[RoutedPort] = []
    for declared in publications:
        ref = declared.meta.ref
        nets = _target_networks(declared, applied)
        if declared.unresolved and _split_routed(declared, nets)[0] is not None:
            unserved = _port_verdict(declared, facts, applied, all_networks) or (
                _no_free_port(declared, facts)
            )
            outcomes[ref] = Outcome(ref, declared.meta.generation, *unserved, declared.meta.uid)
            continue
        network = nets[declared.target_address.version]
        nat_part, routed_ports = _split_routed(declared, nets)
        pub, verdict, bound = (
            _host_binding(nat_part, network) if nat_part is not None else (declared, None, "")
        )
        verdict = verdict or _publication_verdict(
            pub, facts, nets, applied, all_networks, accepted, routed_only=nat_part is None
        )
        if verdict is None and nat_part is None:
            routed += routed_ports
            verdict = _Verdict(State.APPLIED, "Programmed", _routed_message(routed_ports, network))
        if verdict is None:
            kernel_lo, lo_note = _kernel_loopback(pub, facts, network)
            pub_dnats = _dnats(pub, facts, nets, kernel_lo)
            pub_proxies, pub_claims = port_claims.assign(
                pub_dnats, _proxies(pub, facts, nets, kernel_lo), facts.userland_proxy
            )
            if kernel_lo is not None:
                pub_claims = _without_covered_loopback(pub_claims, pub_proxies)
            if not pub_dnats and not pub_proxies:
                verdict = _unserved(pub, facts)
            else:
                accepted.add(pub)
                dnats += pub_dnats
                proxies += pub_proxies
                claims += pub_claims
                sources += _source_rules(pub, pub_dnats, pub_proxies)
                routed += routed_ports
                verdict = _Verdict(
                    State.APPLIED,
                    "Programmed",
                    _applied_message(pub, pub_dnats, pub_proxies) + lo_note,
                )
        if bound:
            verdict = verdict._replace(message=f"{verdict.message}; {bound}")
        assigned = (
            (pub.host_port, pub.host_port_end)
            if pub.assign is not None and not pub.unresolved
            else None
        )
        outcomes[ref] = Outcome(ref, pub.meta.generation, *verdict, pub.meta.uid, assigned)
    return dnats, proxies, claims, sources, routed


def _source_rules(
    pub: PortPublication, dnats: list[Dnat], proxies: list[ProxyPort]
) -> list[SourceRule]:
    """One rule per address the publication serves (DNAT or proxy), in that address's family."""
    if not pub.allowed_sources:
        return []
    where: set[tuple[int, IPAddress | None]] = {(d.family, d.host_ip) for d in dnats}
    where |= {(p.listen.version, None if p.listen.is_unspecified else p.listen) for p in proxies}
    # A wildcard covers the family's specific addresses (and nft refuses overlapping intervals).
    where = {(f, a) for f, a in where if a is None or (f, None) not in where}
    return [
        SourceRule(
            family,
            address,
            pub.protocol,
            pub.host_port,
            pub.host_port_end,
            tuple(n for n in pub.allowed_sources if n.version == family),
            pub.meta.ref,
        )
        for family, address in sorted(where, key=lambda fa: (fa[0], str(fa[1] or "")))
    ]


def _split_routed(
    pub: PortPublication, nets: _Networks
) -> tuple[PortPublication | None, list[RoutedPort]]:
    """The part of `pub` that is NATed (None when every target family's network is routed)
    and the container ports that routed families open instead (gateway modes are per family:
    a dual-stack target may be NATed in one and routed in the other)."""
    routed = []
    for target in pub.targets:
        network = nets[target.version]
        if (
            network is not None
            and network.mode(target.version) is GatewayMode.ROUTED
            and (_holds(network, target))
        ):
            routed.append(target)
    if not routed:
        return pub, []
    ports = [
        RoutedPort(
            t.version,
            t,
            pub.protocol,
            pub.target_port,
            pub.target_port + pub.port_count - 1,
            pub.meta.ref,
        )
        for t in routed
    ]
    rest = [t for t in pub.targets if t not in routed]
    if not rest:
        return None, ports
    return replace(pub, target_address=rest[0], target_address6=None), ports


def _holds(network: BridgePlan, target: IPAddress) -> bool:
    subnet = network.subnet if target.version == 4 else network.subnet6
    return subnet is not None and target in subnet


def _routed_message(ports: list[RoutedPort], network: BridgePlan | None) -> str:
    """Docker documents it: in routed mode the host port (and host IP) are ignored."""
    name = network.network if network is not None else "?"
    opened = ", ".join(
        f"{hostport(r.target)}:{r.port if r.port == r.port_end else f'{r.port}-{r.port_end}'}"
        f"/{r.protocol.value}"
        for r in ports
    )
    return (
        f"{opened} open to direct routing (BridgeNetwork {name} is routed: no NAT, "
        "spec.hostPort and spec.hostIP are ignored)"
    )


def _host_binding(
    pub: PortPublication, network: BridgePlan | None
) -> tuple[PortPublication, _Verdict | None, str]:
    """A publication that names no hostIP takes its network's hostBinding (Docker's
    host_binding_ipv4), and from then on is planned exactly as if it had named it."""
    if pub.host_ip is not None or network is None or network.host_binding is None:
        return pub, None, ""
    binding = network.host_binding
    note = f"hostIP {binding} is BridgeNetwork {network.network}'s spec.hostBinding"
    if binding.version not in {t.version for t in pub.targets} and not binding.is_loopback:
        return (
            pub,
            _Verdict(
                State.INVALID,
                "HostBindingFamilyMismatch",
                f"{pub.meta.ref}: spec.hostIP: absent, and IPv{binding.version} "
                f"{note} cannot be NATed to IPv{pub.target_address.version} "
                f"target {pub.target_address}; set spec.hostIP",
            ),
            "",
        )
    return replace(pub, host_ip=binding), None, note


def _target_network(
    pub: PortPublication, target: IPAddress, applied: dict[str, BridgePlan]
) -> BridgePlan | None:
    """The named network, or else the applied network whose subnet holds the target."""
    if pub.network is not None:
        return applied.get(pub.network)
    for bridge in applied.values():
        subnet = bridge.subnet if target.version == 4 else bridge.subnet6
        if subnet is not None and target in subnet:
            return bridge
    return None


_Networks = dict[int, BridgePlan | None]  # a publication's target networks, by target family


def _target_networks(pub: PortPublication, applied: dict[str, BridgePlan]) -> _Networks:
    """The network of each target, by family (a publication has one target per family at
    most), looked up once per publication: the parts of it planned later (a routed
    family split off, a hostBinding taken) keep their targets and so their networks."""
    return {t.version: _target_network(pub, t, applied) for t in pub.targets}


def _publication_verdict(
    pub: PortPublication,
    facts: NodeFacts,
    nets: _Networks,
    applied: dict[str, BridgePlan],
    all_networks: dict[str, BridgeNetwork],
    accepted: _Claims,
    routed_only: bool = False,
) -> _Verdict | None:
    if pub.network is not None:
        named = all_networks.get(pub.network)
        if named is None:
            return _Verdict(
                State.INVALID,
                "NetworkNotFound",
                f"{pub.meta.ref}: spec.network: BridgeNetwork {pub.network!r} does not exist",
            )
        for field, target in zip(("address", "address6"), pub.targets, strict=False):
            if not named.contains(target):
                subnets = " / ".join(str(s) for s in (named.subnet, named.subnet6) if s)
                return _Verdict(
                    State.INVALID,
                    "TargetOutsideNetwork",
                    f"{pub.meta.ref}: spec.target.{field}: {target} is not "
                    f"inside BridgeNetwork {pub.network} ({subnets})",
                )
    if not pub.node_selector.matches(facts.labels):
        return _Verdict(
            State.INACTIVE,
            "NodeSelectorMismatch",
            f"nodeSelector {pub.node_selector} does not match node {facts.name}",
        )
    if pub.target_address.version == 6 and not facts.ipv6:
        return _Verdict(
            State.INACTIVE,
            "IPv6Disabled",
            f"target {pub.target_address} is IPv6 and IPv6 is disabled on node {facts.name}",
        )
    if pub.network is not None and pub.network not in applied:
        return _Verdict(
            State.INACTIVE,
            "NetworkNotReady",
            f"BridgeNetwork {pub.network} is not applied on node {facts.name}",
        )
    for target in pub.targets:
        network = nets[target.version]
        if network is not None and network.internal:
            return _Verdict(
                State.INACTIVE,
                "InternalNetwork",
                f"BridgeNetwork {network.network} is internal: nothing is published into it",
            )
    if routed_only:
        return None  # no host port, so nothing on the host to check or claim
    host = pub.specific_host_ip
    if host is not None and not host.is_loopback and host not in facts.addresses:
        return _Verdict(
            State.INACTIVE,
            "HostIPNotLocal",
            f"hostIP {host} is not an address of node {facts.name}",
        )
    reserved = _reserved(pub, facts.reserved_ports)
    if reserved:
        return _Verdict(
            State.CONFLICTED,
            "ReservedPort",
            f"{pub.describe()}: reserved port(s) {reserved} on node {facts.name} "
            "(the agent's --reserved-ports) are never published",
        )
    overlap = accepted.first_overlap(pub, facts)
    if overlap is not None:
        winner, family = overlap
        # Name what decided: age when the winner is older, else its incumbency.
        why = (
            "is older and wins"
            if winner.meta.age_key < pub.meta.age_key
            else "is already applied on this node and keeps it"
        )
        return _Verdict(
            State.CONFLICTED,
            "PortConflict",
            f"{pub.describe()} overlaps {winner.describe()} (IPv{family}) "
            f"published by {winner.meta.ref}, which {why}",
        )
    in_use = facts.ports_in_use.get(pub.meta.ref)
    if in_use is not None:
        return _Verdict(State.CONFLICTED, "PortInUse", in_use)
    unclaimed = facts.claims_failed.get(pub.meta.ref)
    if unclaimed is not None:
        return _Verdict(State.FAILED, "ClaimFailed", unclaimed)
    return None


def _reserved(pub: PortPublication, reserved: frozenset[int]) -> str:
    """The reserved ports the publication would take, as text ("" when none)."""
    if not reserved:
        return ""
    hits = sorted(p for p in range(pub.host_port, pub.host_port_end + 1) if p in reserved)
    if not hits:
        return ""
    return ", ".join(str(p) for p in hits[:5]) + (
        f" (+{len(hits) - 5} more)" if len(hits) > 5 else ""
    )


class _Claim(NamedTuple):
    """One family's share of a publication: its address, or None for the whole family."""

    family: int
    address: IPAddress | None
    pub: PortPublication


def _claims_of(pub: PortPublication) -> list[_Claim]:
    address = pub.specific_host_ip
    return [_Claim(family, address, pub) for family in pub.families]


class _Claims:
    """Accepted claims indexed by (family, protocol, port), so checking one is O(ports)."""

    def __init__(self) -> None:
        self.by_port: dict[tuple[int, Protocol, int], list[_Claim]] = {}
        self.ranges: list[_Claim] = []

    def add(self, pub: PortPublication) -> None:
        for claim in _claims_of(pub):
            if pub.host_port == pub.host_port_end:
                key = (claim.family, pub.protocol, pub.host_port)
                self.by_port.setdefault(key, []).append(claim)
            else:
                self.ranges.append(claim)

    def first_overlap(
        self, pub: PortPublication, facts: NodeFacts
    ) -> tuple[PortPublication, int] | None:
        """The first claimant (incumbent, then oldest) overlapping `pub`, and the family
        they share."""
        hits: list[_Claim] = []
        for claim in _claims_of(pub):
            if self.ranges:
                hits += [w for w in self.ranges if _claims_overlap(w, claim)]
            for port in range(pub.host_port, pub.host_port_end + 1):
                hits += [
                    w
                    for w in self.by_port.get((claim.family, pub.protocol, port), ())
                    if _claims_overlap(w, claim)
                ]
        if not hits:
            return None
        first = min(hits, key=lambda w: (_claim_order(w.pub, facts), w.family))
        return first.pub, first.family


def _claims_overlap(a: _Claim, b: _Claim) -> bool:
    """Same family and protocol, overlapping ports, and the same address (a family's
    wildcard overlaps every address of that family, and nothing of the other)."""
    if a.family != b.family or a.pub.protocol != b.pub.protocol:
        return False
    if a.pub.host_port > b.pub.host_port_end or b.pub.host_port > a.pub.host_port_end:
        return False
    return a.address is None or b.address is None or a.address == b.address


def _kernel_loopback(
    pub: PortPublication, facts: NodeFacts, network: BridgePlan | None
) -> tuple[IPAddress | None, str]:
    """loopback: Kernel: the IPv4 loopback address DNATed in the output path, or None; and
    a note for the status saying what stays on the proxy, and why."""
    if pub.loopback is not LoopbackPolicy.KERNEL:
        return None, ""
    host = pub.host_ip
    if host is not None and not (host.is_loopback or host.is_unspecified):
        return None, ""  # nothing on loopback is published
    v6_note = "; ::1 stays on the proxy (the kernel cannot DNAT ::1)"
    if host is not None and host.version == 6:
        return None, v6_note if host.is_loopback else ""
    if 4 not in {t.version for t in pub.targets}:
        return None, "; loopback stays on the proxy (the kernel cannot DNAT ::1 or to IPv6)"
    if host is not None or 6 not in {t.version for t in pub.targets}:
        v6_note = ""
    if network is None:
        return None, (
            "; 127.0.0.1 stays on the proxy: the target is on no BridgeNetwork of "
            "this node (route_localnet is only set on bridgeport's bridges)"
        )
    if not facts.route_localnet:
        return None, (
            f"; 127.0.0.1 stays on the proxy: the agent on node {facts.name} may not "
            "set route_localnet (run it with --manage-sysctls, chart "
            "agent.sysctls.manage)"
        )
    if host is not None and host.is_loopback:
        return host, ""
    return LOOPBACK4, "; 127.0.0.1 by kernel DNAT" + v6_note


def _without_covered_loopback(claims: list[Claim], proxies: list[ProxyPort]) -> list[Claim]:
    """A kernel loopback DNAT's 127.0.0.1 claim, when the same publication already holds
    0.0.0.0 on that port (a bare claim or a proxy listener): the wildcard covers it, and a
    second socket of ours on it would fail against the first (EADDRINUSE)."""
    held = {(c.port, c.protocol) for c in claims if c.listen == WILDCARD4}
    held |= {(p.port, p.protocol) for p in proxies if p.listen == WILDCARD4 and p.holds}
    return [
        c
        for c in claims
        if not (c.listen.version == 4 and c.listen.is_loopback and (c.port, c.protocol) in held)
    ]


def _with_route_localnet(bridges: list[BridgePlan], dnats: list[Dnat]) -> list[BridgePlan]:
    """route_localnet on exactly the bridges that loopback DNATs route to: a packet from
    127.0.0.1 may leave through them (and is masqueraded on the way)."""
    targets = [d.target for d in dnats if d.loopback]
    return [
        replace(b, route_localnet=True)
        if any(t in b.subnet for t in targets if t.version == 4)
        else b
        for b in bridges
    ]


def _proxy_bridge(pub: PortPublication, network: BridgePlan | None, facts: NodeFacts) -> str:
    """The bridge whose own traffic to this port the proxy serves instead of DNAT, or "".

    With interContainer: false, a DNATed packet from a container to its own or a
    neighbour's published port is bridged back between isolated ports (br_netfilter
    DNATs at the bridge) and dropped. Docker leaves that traffic to docker-proxy; so do we,
    whenever the proxy can serve the port (`network`: the target's)."""
    if network is None or network.inter_container:
        return ""
    if (
        not facts.userland_proxy
        or pub.loopback is LoopbackPolicy.NEVER
        or (pub.protocol is Protocol.SCTP)
    ):
        return ""
    return network.name


def _dnats(
    pub: PortPublication,
    facts: NodeFacts,
    nets: _Networks,
    kernel_lo: IPAddress | None = None,
) -> list[Dnat]:
    """Kernel NAT per family, unless the host IP is loopback or the family cannot forward;
    and the loopback address that loopback: Kernel serves in the kernel."""
    loop = (
        [
            Dnat(
                4,
                kernel_lo,
                pub.protocol,
                pub.host_port,
                pub.host_port_end,
                pub.target_for(4),
                pub.target_port,
                pub.meta.ref,
            )
        ]
        if kernel_lo
        else []
    )
    host = pub.specific_host_ip
    if host is not None and host.is_loopback:
        return loop
    return loop + [
        Dnat(
            family,
            host,
            pub.protocol,
            pub.host_port,
            pub.host_port_end,
            target,
            pub.target_port,
            pub.meta.ref,
            _proxy_bridge(pub, nets[target.version], facts),
        )
        for family in pub.families
        if facts.forwarding(family)
        for target in (pub.target_for(family),)
    ]


def _proxies(
    pub: PortPublication,
    facts: NodeFacts,
    nets: _Networks,
    kernel_lo: IPAddress | None = None,
) -> list[ProxyPort]:
    listens = _proxy_listens(pub, facts, nets)
    return listens if kernel_lo is None else [p for p in listens if p.listen != kernel_lo]


def _proxy_listens(pub: PortPublication, facts: NodeFacts, nets: _Networks) -> list[ProxyPort]:
    if pub.loopback is LoopbackPolicy.NEVER or pub.protocol is Protocol.SCTP:
        return []  # the userland proxy speaks TCP and UDP
    host = pub.specific_host_ip
    listens: list[tuple[IPAddress, str, IPAddress]] = []
    for family in pub.families:
        target = pub.target_for(family)
        everywhere = host or (WILDCARD4 if family == 4 else WILDCARD6)
        if pub.loopback is LoopbackPolicy.ALWAYS:
            listens.append((everywhere, "always", target))
        elif host is not None and host.is_loopback:
            listens.append((host, "loopback", target))
        elif not facts.forwarding(family):
            listens.append((everywhere, "no-forwarding", target))
        elif _proxy_bridge(pub, nets[target.version], facts):
            listens.append((everywhere, "icc-off", target))
        elif host is None and family == 4:
            listens.append((LOOPBACK4, "loopback", target))
        elif host is None:
            # Not LOOPBACK6: link-local sources are never DNATed (they cannot be forwarded),
            # and :: serves them along with ::1, as docker-proxy does.
            listens.append((WILDCARD6, "loopback+link-local", target))
    return [
        ProxyPort(
            addr,
            port,
            pub.protocol,
            target,
            pub.target_port + (port - pub.host_port),
            pub.meta.ref,
            why,
        )
        for addr, why, target in listens
        for port in range(pub.host_port, pub.host_port_end + 1)
    ]


def _unserved(pub: PortPublication, facts: NodeFacts) -> _Verdict:
    if not facts.userland_proxy:
        return _Verdict(
            State.INACTIVE,
            "ProxyDisabled",
            f"only the userland proxy could serve this port on node {facts.name}, "
            "and the agent runs with --no-proxy",
        )
    host = pub.specific_host_ip
    if host is not None and host.is_loopback:
        return _Verdict(
            State.INACTIVE,
            "LoopbackNeedsProxy",
            f"hostIP {host} is only reachable through the userland proxy, "
            "and spec.loopback is Never",
        )
    families = "/".join(f"IPv{f}" for f in pub.families)
    return _Verdict(
        State.INACTIVE,
        "IPForwardingDisabled",
        f"{families} forwarding is off on node {facts.name} and spec.loopback "
        "is Never, so nothing can serve this port",
    )


def _applied_message(pub: PortPublication, dnats: list[Dnat], proxies: list[ProxyPort]) -> str:
    """What serves the publication, per target: "8080/TCP -> 10.0.0.2:80 via kernel DNAT and
    proxy on 127.0.0.1; [fd00::2]:80 via ..."."""
    # Targets by family (a publication has one per family), in one pass over each list (a
    # range has a listener per port): whether a DNAT off loopback serves it (True) or only
    # one on loopback (False), and the proxy's listen addresses.
    kernel: dict[int, bool] = {}
    for d in dnats:
        kernel[d.target.version] = kernel.get(d.target.version, False) or not d.loopback
    listens: dict[int, set[str]] = {}
    for p in proxies:
        listens.setdefault(p.target.version, set()).add(address_text(p.listen))
    ports = (
        f"{pub.target_port}"
        if pub.host_port == pub.host_port_end
        else f"{pub.target_port}-{pub.target_port + pub.port_count - 1}"
    )
    served = kernel.keys() | listens.keys()
    parts = []
    for family in sorted(served):
        via = []
        if kernel.get(family):
            via.append("kernel DNAT")
        elif family in kernel:
            via.append(f"kernel DNAT on {next(d.host_ip for d in dnats if d.loopback)}")
        if family in listens:
            via.append("proxy on " + ", ".join(sorted(listens[family])))
        parts.append(f"{hostport(pub.target_for(family))}:{ports} via {' and '.join(via)}")
    if pub.host_ip is None and len(served) < len(pub.targets):  # one family per target
        unserved = sorted({t.version for t in pub.targets} - served)
        if unserved:
            parts.append(
                f"IPv{unserved[0]} not served: forwarding is off and the proxy cannot serve it"
            )
    return f"{pub.describe()} -> {'; '.join(parts)}"


def _addr_order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


def _routed_order(r: RoutedPort) -> tuple[int, tuple[int, int], str, int]:
    return (r.family, _addr_order(r.target), r.protocol.value, r.port)


def _dnat_order(d: Dnat) -> tuple[int, tuple[int, int], str, int]:
    host = _addr_order(d.host_ip) if d.host_ip else (0, 0)
    return (d.family, host, d.protocol.value, d.port)
