"""NodePlan -> nftables content: tables `ip bridgeport` and `ip6 bridgeport`, nothing else.

Per-packet cost is flat in the number of publications: DNAT goes through maps (host-IP maps
first, then wildcard maps; interval maps for ranges that keep their port numbers), forward and
masquerade and hairpin dispatch go through verdict maps keyed by bridge.

Everything here is pure text generation from validated, typed values: addresses come from
`ipaddress`, ports are ints, interface names matched `specs.IFNAME`, comments are resource keys
made of DNS-1123 characters. No string from a resource reaches nft unchecked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from typing import NamedTuple

from bridgeport.core.plan import BridgePlan, Dnat, NodePlan, SourceRule
from bridgeport.core.specs import IFNAME, GatewayMode, Protocol, address_text

TABLE = "bridgeport"
LOOP_PORTS = "loop_ports"  # single published ports: a hash set
LOOP_RANGES = "loop_ranges"  # published port ranges: an interval set
FAMILIES = ("ip", "ip6")
COMMENT = "managed by bridgeport; changes are reverted"
_SAFE_COMMENT = re.compile(r"^[a-z0-9./-]{1,128}$")


@dataclass(frozen=True)
class Lookup:
    """A named set or map of a table: elements looked up by key. nft's `set` when `type` is a
    key alone, its `map` when it is `key : value` (a verdict map when the value is `verdict`)."""

    name: str
    type: str  # e.g. "ipv4_addr . ipv4_addr" or "ifname : verdict"
    interval: bool = False
    counter: bool = False  # a counter on every element (per-publication traffic)

    @property
    def keyword(self) -> str:
        return "map" if ":" in self.type else "set"

    def body(self) -> str:
        return (
            f"type {self.type};"
            + (" flags interval;" if self.interval else "")
            + (" counter;" if self.counter else "")
        )


class Element(NamedTuple):
    """A set/map element as text. A NamedTuple: hashing 10,000 of them per diff is cheap."""

    key: str
    value: str = ""
    comment: str = ""

    def text(self) -> str:
        return element_text(self.key, self.value, self.comment)


def element_text(key: str, value: str = "", comment: str = "") -> str:
    """An element as `nft -f` takes it: the one spelling of it (digests hash this text). Of
    plain strings, not an Element: a full load formats tens of thousands."""
    return key + (f' comment "{comment}"' if comment else "") + (f" : {value}" if value else "")


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...]
    hook: str = ""  # "type nat hook prerouting priority dstnat; policy accept;" for base chains


@dataclass(frozen=True)
class Table:
    family: str
    lookups: tuple[Lookup, ...]
    chains: tuple[Chain, ...]
    elements: Mapping[str, frozenset[Element]] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return f"{self.family} {TABLE}"

    def text(self, ordered: bool = True) -> str:
        """The whole table as one `nft -f` block: readable, golden-tested, and applied as is
        (unordered: the elements as the sets hold them, which the kernel does not mind)."""
        lines = [f"table {self.ident} {{", f'\tcomment "{COMMENT}"']
        for s in self.lookups:
            lines.append(f"\t{s.keyword} {s.name} {{")
            lines.append(f"\t\t{s.body()}")
            held = self.elements.get(s.name, ())
            elements = sorted(held) if ordered else held
            if elements:
                lines.append("\t\telements = {")
                lines += [f"\t\t\t{element_text(k, v, c)}," for k, v, c in elements]
                lines.append("\t\t}")
            lines.append("\t}")
        for c in self.chains:
            lines.append(f"\tchain {c.name} {{")
            if c.hook:
                lines.append(f"\t\t{c.hook}")
            lines += [f"\t\t{r}" for r in c.rules]
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def skeleton(self) -> str:
        """The text without set elements: what the digest hashes besides the elements."""
        return replace(self, elements={}).text()

    def replace_script(self) -> str:
        """Declare, delete and redeclare in one batch: atomic whether or not the table exists.
        The elements unordered: sorting 40,000 of them took a third of writing the script."""
        return f"add table {self.ident}\ndelete table {self.ident}\n{self.text(ordered=False)}"

    def fingerprint(self) -> dict[str, int]:
        """Rule count per chain and element count per set: what a drift check compares."""
        counts = {f"chain {c.name}": len(c.rules) for c in self.chains}
        counts |= {f"set {s.name}": len(self.elements.get(s.name, ())) for s in self.lookups}
        return counts


def render(plan: NodePlan, counters: bool = True) -> tuple[Table, Table]:
    """interContainer: false is mostly not here: the links adapter isolates bridge ports,
    which holds with or without br_netfilter and needs no bridge-family nft support. What is
    here: traffic from such a bridge (`icc_off`, one hash lookup for every new flow) to its
    own published ports (`icc_proxy_*`) skips DNAT, so the proxy serves it as docker-proxy
    does, instead of br_netfilter bridging it back between two isolated ports.

    `counters` adds per-publication packet and byte counters (see `_count_chains`)."""
    loop = _loop_port_elements(plan)  # the same in both tables
    return (_ip_table(plan, 4, loop, counters), _ip_table(plan, 6, loop, counters))


def digest(
    tables: Iterable[Table], set_digests: Mapping[tuple[str, str], int] | None = None
) -> str:
    """What was programmed, in 16 hex digits: the tables' declarations and chains as text,
    and per set its element count and the XOR of its elements' hashes, so that a renderer
    which patches a few elements updates it in O(change) (`set_digests`, keyed by (family,
    set name), equal to `elements_digest` of each set; computed here when not given)."""
    h = hashlib.sha256()
    for t in tables:
        h.update(t.skeleton().encode())
        for s in t.lookups:
            elements = t.elements.get(s.name, frozenset())
            value = (
                set_digests[(t.family, s.name)]
                if set_digests is not None
                else elements_digest(elements)
            )
            h.update(f"{s.name} {len(elements)} {value:016x}\n".encode())
    return h.hexdigest()[:16]


def element_hash(e: Element) -> int:
    return int.from_bytes(blake2b(e.text().encode(), digest_size=8).digest(), "big")


def elements_digest(elements: Iterable[Element]) -> int:
    """The XOR of the elements' hashes: adding or removing one flips its hash in or out."""
    digest = 0
    for key, value, comment in elements:  # element_hash, one call less: a load has 40,000
        text = element_text(key, value, comment)
        digest ^= int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")
    return digest


def _ip_table(
    plan: NodePlan,
    version: int,
    loop: tuple[frozenset[Element], frozenset[Element]],
    counters: bool = True,
) -> Table:
    ip, addr = ("ip", "ipv4_addr") if version == 4 else ("ip6", "ipv6_addr")
    loopback = "127.0.0.0/8" if version == 4 else "::1"
    # Link-local sources cannot be forwarded to a container: Docker leaves them to its proxy
    # (ip6 saddr != fe80::/10 on every DNAT), and so do we; the proxy listens on ::.
    link_local = "ip6 saddr != fe80::/10 " if version == 6 else ""
    c = counters
    lookups: tuple[Lookup, ...] = (
        # With counters, each DNAT element counts the first packet of every connection it
        # translates (nat chains see nothing else): connections per publication.
        Lookup(
            "pub_host", f"{addr} . inet_proto . inet_service : {addr} . inet_service", counter=c
        ),
        Lookup(
            "pub_host_range",
            f"{addr} . inet_proto . inet_service : {addr}",
            interval=True,
            counter=c,
        ),
        Lookup("pub_any", f"inet_proto . inet_service : {addr} . inet_service", counter=c),
        Lookup("pub_any_range", f"inet_proto . inet_service : {addr}", interval=True, counter=c),
        *(_count_lookups(addr) if counters else ()),
        Lookup("icc_off", "ifname"),
        # Single ports in hash sets and ranges apart in interval sets, here and below: the kernel
        # keeps a concatenated interval set as pipapo, whose every insert and delete is
        # O(elements) (10,000 single ports: ~1 s to load, 15 ms to delete one; a hash set:
        # 40 ms, 0.1 ms).
        Lookup("icc_proxy_host", f"ifname . {addr} . inet_proto . inet_service"),
        Lookup(
            "icc_proxy_host_range", f"ifname . {addr} . inet_proto . inet_service", interval=True
        ),
        Lookup("icc_proxy_any", "ifname . inet_proto . inet_service"),
        Lookup("icc_proxy_any_range", "ifname . inet_proto . inet_service", interval=True),
        # spec.allowedSources: restricted address . protocol . port -> that publication's
        # src_<id> chain, which drops every source outside its list. Hash maps, one exact
        # lookup per new flow whatever the number of publications (an interval set of
        # addr . proto . port . saddr would be one lookup too, but nft's pipapo scans a bitmap
        # as long as the element count).
        Lookup("src_host", f"{addr} . inet_proto . inet_service : verdict"),
        Lookup("src_any", "inet_proto . inet_service : verdict"),
        # Every published protocol . port: remote loopback to these is dropped in raw.
        Lookup(LOOP_PORTS, "inet_proto . inet_service"),
        Lookup(LOOP_RANGES, "inet_proto . inet_service", interval=True),
        Lookup("shared", "ifname"),
        Lookup("bridges", "ifname"),
        Lookup("routed", f"{addr} . inet_proto . inet_service"),
        Lookup("routed_range", f"{addr} . inet_proto . inet_service", interval=True),
        Lookup("fwd_in", "ifname : verdict"),
        Lookup("fwd_out", "ifname : verdict"),
        Lookup("masq_from", "ifname : verdict"),
        Lookup("hairpin_to", "ifname : verdict"),
    )
    kernel_lo = version == 4 and any(d.loopback for d in plan.dnats)
    if kernel_lo:
        lookups += _KERNEL_LOOPBACK_LOOKUPS
    elements: dict[str, set[Element]] = {s.name: set() for s in lookups}
    for d in plan.dnats:
        if d.family == version:
            for name, element in dnat_elements(d):
                elements[name].add(element)
                if counters and name in COUNTED:  # cnt_host mirrors pub_host, ...
                    elements["cnt" + name[3:]].add(Element(element.key, "", element.comment))
    source_chains = _source_chains(plan.source_rules, version, ip, elements)
    # The same check on the DNAT path (nat, first packet of a flow) and on the proxy's path
    # (input, new flows): two hash lookups, then the publication's own short list.
    check = (
        f"{ip} daddr . meta l4proto . th dport vmap @src_host",
        "meta l4proto . th dport vmap @src_any",
    )
    for r in plan.routed:
        if r.family == version:
            single = r.port == r.port_end
            ports = f"{r.port}" if single else f"{r.port}-{r.port_end}"
            elements["routed" if single else "routed_range"].add(
                Element(f"{r.target} . {r.protocol.nft} . {ports}", comment=_comment(r.owner.key))
            )

    chains = [
        # Docker 28's remote-loopback rule (CVE-2020-8558), whatever route_localnet says:
        # loopback destinations arriving from another interface never reach a published port.
        Chain(
            "raw_prerouting",
            (
                f'{ip} daddr {loopback} iif != "lo" '
                f"meta l4proto . th dport @{LOOP_PORTS} counter drop",
                f'{ip} daddr {loopback} iif != "lo" '
                f"meta l4proto . th dport @{LOOP_RANGES} counter drop",
                # loopback: Kernel (CVE-2020-8558 again): our route_localnet bridges would deliver
                # a container's packets for 127.0.0.0/8 to the node's loopback services.
                *(("ip daddr 127.0.0.0/8 iifname @localnet counter drop",) if kernel_lo else ()),
            ),
            "type filter hook prerouting priority raw; policy accept;",
        ),
        Chain(
            "prerouting",
            (
                "iifname @icc_off jump icc_proxy",
                f"{link_local}fib daddr type local jump publish",
            ),
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        # From an interContainer: false bridge to its own published ports: no DNAT (accept
        # ends this hook), the proxy listening there serves it.
        Chain(
            "icc_proxy",
            (
                f"iifname . {ip} daddr . meta l4proto . th dport @icc_proxy_host accept",
                f"iifname . {ip} daddr . meta l4proto . th dport @icc_proxy_host_range accept",
                "iifname . meta l4proto . th dport @icc_proxy_any accept",
                "iifname . meta l4proto . th dport @icc_proxy_any_range accept",
            ),
        ),
        # The output hook needs a numeric priority; loopback destinations go to the proxy.
        Chain(
            "output",
            (
                f"{ip} daddr != {loopback} {link_local}fib daddr type local jump publish",
                *(("ip daddr 127.0.0.0/8 jump publish_lo",) if kernel_lo else ()),
            ),
            "type nat hook output priority -100; policy accept;",
        ),
        Chain(
            "input",
            tuple(f"ct state new {c}" for c in check),
            "type filter hook input priority filter; policy accept;",
        ),
        Chain(
            "publish",
            (
                *check,
                f"dnat {ip} to {ip} daddr . meta l4proto . th dport map @pub_host",
                f"dnat {ip} to {ip} daddr . meta l4proto . th dport map @pub_host_range",
                f"dnat {ip} to meta l4proto . th dport map @pub_any",
                f"dnat {ip} to meta l4proto . th dport map @pub_any_range",
            ),
        ),
        Chain(
            "postrouting",
            (
                # loopback: Kernel: 127.0.0.1 leaving through a bridge takes the bridge's address.
                *(("ip saddr 127.0.0.0/8 oifname @localnet masquerade",) if kernel_lo else ()),
                "oifname vmap @hairpin_to",
                "iifname vmap @masq_from",
            ),
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
        Chain(
            "forward",
            (
                "ct state established,related accept",
                *_accept_mark_rules(plan),
                "iifname vmap @fwd_in",
                "oifname vmap @fwd_out",
            ),
            "type filter hook forward priority filter; policy accept;",
        ),
    ]
    if kernel_lo:
        chains += _kernel_loopback_chains()
    if counters:
        chains += _count_chains(ip, elements)
    for b in plan.bridges:
        _check_ifname(b.name)
        name = f'"{b.name}"'
        if kernel_lo and b.route_localnet:
            elements["localnet"].add(Element(name))
        elements["fwd_in"].add(Element(name, f"jump from_{b.name}"))
        elements["fwd_out"].add(Element(name, f"jump to_{b.name}"))
        elements["bridges"].add(Element(name))
        if b.shared and not b.internal:
            elements["shared"].add(Element(name))
        if not b.inter_container and not b.internal:
            elements["icc_off"].add(Element(name))
        chains.append(Chain(f"from_{b.name}", _from_bridge_rules(b)))
        chains.append(Chain(f"to_{b.name}", _to_bridge_rules(b, version)))
        subnet = b.subnet if version == 4 else b.subnet6
        if subnet is None or b.internal or b.mode(version) is GatewayMode.ROUTED:
            continue  # routed: no NAT of any kind for this family
        # A container reaching a published port (its own or a neighbour's) through the node:
        # without SNAT the answer would bypass the node and the client would drop it. Matching
        # the outgoing bridge covers the routed and the br_netfilter-bridged path alike.
        elements["hairpin_to"].add(Element(name, f"jump hairpin_{b.name}"))
        chains.append(
            Chain(f"hairpin_{b.name}", (f"ct status dnat {ip} saddr {subnet} masquerade",))
        )
        if b.masquerade:
            elements["masq_from"].add(Element(name, f"jump masq_{b.name}"))
            egress = b.egress(version)
            nat = f"snat {ip} to {egress}" if egress is not None else "masquerade"
            chains.append(
                Chain(f"masq_{b.name}", (f'{ip} saddr {subnet} oifname != "{b.name}" {nat}',))
            )
    chains += source_chains
    frozen = {k: frozenset(v) for k, v in elements.items()}
    frozen[LOOP_PORTS], frozen[LOOP_RANGES] = loop  # every published protocol . port
    return Table(ip, lookups, tuple(chains), frozen)


def _accept_mark_rules(plan: NodePlan) -> tuple[str, ...]:
    """The node's accept mark: an administrator's chain at a lower priority marks what our
    forward drops must let through (Docker 29's --bridge-accept-fwmark; DOCKER-USER's job)."""
    m = plan.accept_mark
    if m is None:
        return ()
    return (f"meta mark & {m.mask:#010x} == {m.mark:#010x} accept",)


COUNTED = frozenset({"pub_host", "pub_host_range", "pub_any", "pub_any_range"})
COUNT_SETS = ("cnt_host", "cnt_host_range", "cnt_any", "cnt_any_range")


def _count_lookups(addr: str) -> tuple[Lookup, ...]:
    return (
        Lookup("cnt_host", f"{addr} . inet_proto . inet_service", counter=True),
        Lookup(
            "cnt_host_range", f"{addr} . inet_proto . inet_service", interval=True, counter=True
        ),
        Lookup("cnt_any", "inet_proto . inet_service", counter=True),
        Lookup("cnt_any_range", "inet_proto . inet_service", interval=True, counter=True),
    )


def _count_chains(ip: str, elements: Mapping[str, set[Element]]) -> tuple[Chain, ...]:
    """Every later packet of a DNATed flow, keyed by the publication's own host-side tuple.

    nft 1.0.6 cannot concatenate `ct original proto-dst`, so each direction is counted where
    its packets still carry the host address and port: the original direction in prerouting
    before our DNAT (priority mangle, -150), replies in postrouting after the reverse
    translation (priority 200). Anything not DNATed leaves after one bit test; only sets that
    have elements get a lookup (most nodes use one or two of the four). The first packet of a
    flow is counted by the DNAT map element instead. Flows from processes on the node itself
    (output DNAT) are counted as connections only.
    """
    rules_in, rules_out = (
        ["ct status & dnat == 0 accept"],
        ["ct status & dnat == 0 accept", "ct direction original accept"],
    )
    for name, host in (
        ("cnt_host", True),
        ("cnt_host_range", True),
        ("cnt_any", False),
        ("cnt_any_range", False),
    ):
        if not elements[name]:
            continue
        rules_in.append(f"{f'{ip} daddr . ' if host else ''}meta l4proto . th dport @{name}")
        rules_out.append(f"{f'{ip} saddr . ' if host else ''}meta l4proto . th sport @{name}")
    return (
        Chain(
            "count_in",
            tuple(rules_in),
            "type filter hook prerouting priority mangle; policy accept;",
        ),
        Chain(
            "count_out",
            tuple(rules_out),
            "type filter hook postrouting priority 200; policy accept;",
        ),
    )


def _from_bridge_rules(b: BridgePlan) -> tuple[str, ...]:
    """Leaving a container: its own bridge is always fine; internal stops everything else."""
    rules = [f'oifname "{b.name}" accept']
    if b.internal:
        rules.append("counter drop")
    return tuple(rules)


def _to_bridge_rules(b: BridgePlan, version: int) -> tuple[str, ...]:
    """New traffic entering from elsewhere: only published ports (DNAT) or a Shared peer;
    anything from a trusted host interface; per the family's gateway mode, also anything from
    outside our bridges (nat-unprotected) or the published container ports and ICMP (routed).
    Other bridges stay isolated."""
    rules: list[str] = []
    if not b.internal:
        # Published ports arrive DNATed. Unlike Docker 28 we do not also admit traffic routed
        # straight to a published container port: one map element per port, nothing else.
        rules.append("ct status dnat accept")
        if b.shared:
            rules.append("iifname @shared accept")
        if b.trusted_interfaces:
            for trusted in b.trusted_interfaces:
                _check_ifname(trusted)
            names = ", ".join(f'"{n}"' for n in b.trusted_interfaces)
            rules.append(f"iifname {{ {names} }} accept")
        mode = b.mode(version)
        if mode is GatewayMode.NAT_UNPROTECTED:
            rules.append("iifname != @bridges accept")
        elif mode is GatewayMode.ROUTED:
            ip, icmp = ("ip", "icmp") if version == 4 else ("ip6", "ipv6-icmp")
            for routed in ("routed", "routed_range"):
                rules.append(
                    f"iifname != @bridges {ip} daddr . meta l4proto . th dport @{routed} accept"
                )
            rules.append(f"iifname != @bridges meta l4proto {icmp} accept")
    rules.append("counter drop")
    return tuple(rules)


_KERNEL_LOOPBACK_LOOKUPS = (
    Lookup("pub_lo", "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"),
    Lookup("pub_lo_range", "ipv4_addr . inet_proto . inet_service : ipv4_addr", interval=True),
    Lookup("localnet", "ifname"),
)


def _kernel_loopback_chains() -> list[Chain]:
    """loopback: Kernel (IPv4 only): the node's own connections to 127.0.0.1 are DNATed in
    the output path; prerouting never looks at pub_lo, so nothing from outside is. Bridges
    with route_localnet would deliver a container's packets for 127.0.0.0/8 to the node's
    loopback services: raw_prerouting drops them before conntrack (CVE-2020-8558). Replies of
    our masqueraded flows still pass: raw sees them addressed to the bridge, before conntrack
    restores 127.0.0.1."""
    return [
        Chain(
            "publish_lo",
            (
                "dnat ip to ip daddr . meta l4proto . th dport map @pub_lo",
                "dnat ip to ip daddr . meta l4proto . th dport map @pub_lo_range",
            ),
        ),
    ]


def dnat_elements(d: Dnat) -> list[tuple[str, Element]]:
    proto = d.protocol.nft
    host = f"{address_text(d.host_ip)} . " if d.host_ip is not None else ""
    prefix = "pub_lo" if d.loopback else "pub_host" if d.host_ip is not None else "pub_any"
    comment = _comment(d.owner.key)
    if not d.proxy_from and d.port == d.port_end:  # most: one map element
        target = f"{address_text(d.target)} . {d.target_port}"
        return [(prefix, Element(f"{host}{proto} . {d.port}", target, comment))]
    skip: list[tuple[str, Element]] = []
    if d.proxy_from:
        _check_ifname(d.proxy_from)
        single = d.port == d.port_end
        ports = f"{d.port}" if single else f"{d.port}-{d.port_end}"
        skip.append(
            (
                ("icc_proxy_host" if d.host_ip is not None else "icc_proxy_any")
                + ("" if single else "_range"),
                Element(f'"{d.proxy_from}" . {host}{proto} . {ports}', "", comment),
            )
        )
    return skip + _dnat_map_elements(d, proto, host, prefix, comment)


def _dnat_map_elements(
    d: Dnat, proto: str, host: str, prefix: str, comment: str
) -> list[tuple[str, Element]]:
    if d.port == d.port_end:
        return [
            (
                prefix,
                Element(
                    f"{host}{proto} . {d.port}",
                    f"{address_text(d.target)} . {d.target_port}",
                    comment,
                ),
            )
        ]
    if d.same_ports:
        return [
            (
                f"{prefix}_range",
                Element(f"{host}{proto} . {d.port}-{d.port_end}", str(d.target), comment),
            )
        ]
    # A shifted range cannot be one interval (nft maps an interval to one value): expand 1:1.
    return [
        (prefix, Element(f"{host}{proto} . {port}", f"{d.target} . {d.target_port + i}", comment))
        for i, port in enumerate(range(d.port, d.port_end + 1))
    ]


def _source_chains(
    rules: Iterable[SourceRule], version: int, ip: str, elements: dict[str, set[Element]]
) -> list[Chain]:
    """One src_<id> chain per restricted publication, and the map elements jumping there.
    A key already taken (the planner never plans two; this keeps a planner bug from failing
    the whole transaction) keeps its first owner."""
    chains: dict[str, Chain] = {}
    taken: set[tuple[str, str]] = set()
    for r in sorted((r for r in rules if r.family == version), key=lambda r: (r.owner, r.port)):
        name = "src_" + hashlib.sha256(r.owner.key.encode()).hexdigest()[:12]
        if name not in chains:
            allowed = ", ".join(str(n) for n in r.sources)
            chains[name] = Chain(
                name,
                (f"{ip} saddr != {{ {allowed} }} counter drop" if allowed else "counter drop",),
            )
        host = f"{r.address} . " if r.address is not None else ""
        target = "src_host" if r.address is not None else "src_any"
        for port in range(r.port, r.port_end + 1):
            key = f"{host}{r.protocol.nft} . {port}"
            if (target, key) not in taken:
                taken.add((target, key))
                elements[target].add(Element(key, f"jump {name}", _comment(r.owner.key)))
    return list(chains.values())


def _loop_port_elements(plan: NodePlan) -> tuple[frozenset[Element], frozenset[Element]]:
    """Every published protocol . port: the single ports, and the ranges merged (an interval
    set refuses overlaps; a single port inside a range is listed in both sets)."""
    singles: set[Element] = set()
    spans: dict[Protocol, list[tuple[int, int]]] = {}
    for d in plan.dnats:
        if d.port == d.port_end:
            singles.add(loop_element(d.protocol, d.port, d.port))
        else:
            spans.setdefault(d.protocol, []).append((d.port, d.port_end))
    singles |= {loop_element(p.protocol, p.port, p.port) for p in plan.proxies}
    ranges: set[Element] = set()
    for proto, spans_of in spans.items():
        ranges |= {loop_element(proto, lo, hi) for lo, hi in merge_spans(sorted(spans_of))}
    return frozenset(singles), frozenset(ranges)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans merged where they overlap (adjacent ones stay apart: smaller diffs)."""
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def loop_element(proto: Protocol, lo: int, hi: int) -> Element:
    return Element(f"{proto.nft} . {lo}" if lo == hi else f"{proto.nft} . {lo}-{hi}")


def _comment(text: str) -> str:
    text = text[:128]
    if not _SAFE_COMMENT.match(text):
        raise ValueError(f"unsafe nft comment {text!r}")
    return text


def _check_ifname(name: str) -> None:
    if not IFNAME.match(name):
        raise ValueError(f"unsafe interface name {name!r}")


def diff(old: Table, new: Table) -> list[str] | None:
    """Commands turning `old` into `new` in place, or None when only a full replace will do.

    Declarations and base chains are fixed by design, so in steady state only elements and
    per-bridge chains change: one small transaction, no rewrite of unrelated content.
    """
    if old.family != new.family or old.lookups != new.lookups:
        return None
    old_chains = {c.name: c for c in old.chains}
    new_chains = {c.name: c for c in new.chains}
    for name, chain in new_chains.items():
        if name in old_chains and old_chains[name].hook != chain.hook:
            return None
        if chain.hook and name not in old_chains:
            return None
    t = new.ident
    cmds: list[str] = []
    for name, chain in new_chains.items():
        if name not in old_chains:
            cmds.append(f"add chain {t} {name}")
            cmds += [f"add rule {t} {name} {r}" for r in chain.rules]
        elif old_chains[name].rules != chain.rules:
            cmds.append(f"flush chain {t} {name}")
            cmds += [f"add rule {t} {name} {r}" for r in chain.rules]
    for s in new.lookups:
        before = old.elements.get(s.name, frozenset())
        after = new.elements.get(s.name, frozenset())
        if before is after:  # a patched table shares the sets it did not touch
            continue
        removed, added = sorted(before - after), sorted(after - before)
        if removed:
            cmds.append(f"delete element {t} {s.name} {{ {', '.join(e.key for e in removed)} }}")
        if added:
            cmds.append(f"add element {t} {s.name} {{ {', '.join(e.text() for e in added)} }}")
    for name, chain in old_chains.items():
        if name not in new_chains:
            if chain.hook:
                return None
            cmds.append(f"delete chain {t} {name}")
    return cmds
