"""Typed, immutable specs parsed from BridgeNetwork / PortPublication documents.

Parsing never raises for bad content: it returns an `InvalidResource` whose errors name the
resource and the field path, so one bad document never hides the others.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeVar, overload

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ALLOWED_SOURCES = 64
_E = TypeVar("_E", bound=StrEnum)

# The API, named once: the CRDs in crds/ declare the same.
GROUP, VERSION = "bridgeport.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
BRIDGE_NETWORK = "BridgeNetwork"
PORT_PUBLICATION = "PortPublication"
KINDS = (BRIDGE_NETWORK, PORT_PUBLICATION)
PLURALS = {PORT_PUBLICATION: "portpublications", BRIDGE_NETWORK: "bridgenetworks"}
NODESTATES = "nodestates"  # the agents' reports (kind NodeState)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Kernel interface names: at most 15 bytes; we also keep to characters that are safe unquoted
# in nft chain names and in shell output.
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# Messages land in state files, NodeStates and Events: they quote a prefix of a value, never
# the whole (an alias bomb expands a 500-byte file into megabytes), and list a few errors.
QUOTE_CHARS = 40
MAX_ERRORS = 10
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, QUOTE_CHARS, QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 3


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def nft(self) -> str:
        return self.lower()  # a str method: no Enum.value lookup (10,000s per render)


class Isolation(StrEnum):
    ISOLATED = "Isolated"
    SHARED = "Shared"


class GatewayMode(StrEnum):
    """Docker 28's com.docker.network.bridge.gateway_mode_ipv4/_ipv6, per address family."""

    NAT = "nat"  # DNAT for published ports, masquerade, direct routed access dropped
    NAT_UNPROTECTED = "nat-unprotected"  # the same, without dropping direct routed access
    ROUTED = "routed"  # no NAT: published container ports are open to direct routing
    ISOLATED = "isolated"  # internal networks only: no address of this family on the bridge


class LoopbackPolicy(StrEnum):
    AUTO = "Auto"
    ALWAYS = "Always"
    NEVER = "Never"
    KERNEL = "Kernel"  # 127.0.0.1 by DNAT in the kernel (Docker's userland-proxy=false)


class ResourceRef(NamedTuple):
    """kind, namespace ("" when cluster-scoped), name: a resource's identity and sort order."""

    kind: str
    namespace: str  # "" for cluster-scoped resources
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )

    @property
    def key(self) -> str:
        """namespace/name (or name): the form used in comments and messages."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True)
class NodeSelector:
    """A metav1.LabelSelector; the empty selector selects every node."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if not self.match_labels and not self.match_expressions:
            return True  # most resources select every node: no generators to run
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [f"{r.key} {r.operator} ({','.join(r.values)})" for r in self.match_expressions]
        return ",".join(parts) or "<everything>"


@dataclass(frozen=True)
class Meta:
    ref: ResourceRef
    generation: int = 1
    created: str = ""  # RFC 3339 creationTimestamp; "" sorts first (standalone files)
    uid: str = ""

    @property
    def age_key(self) -> tuple[str, str, str]:
        """Oldest wins a conflict, ties broken by namespace/name."""
        return (self.created, self.ref.namespace, self.ref.name)


@dataclass(frozen=True)
class BridgeNetwork:
    meta: Meta
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    subnet6: ipaddress.IPv6Network | None = None
    gateway6: ipaddress.IPv6Address | None = None
    mtu: int = 1500
    masquerade: bool = True
    internal: bool = False
    inter_container: bool = True
    isolation: Isolation = Isolation.ISOLATED
    node_selector: NodeSelector = field(default_factory=NodeSelector)
    # The hostIP of publications on this network that name none (Docker's host_binding_ipv4).
    host_binding: IPAddress | None = None
    gateway_mode: GatewayMode = GatewayMode.NAT
    gateway_mode6: GatewayMode = GatewayMode.NAT
    # Host interfaces whose traffic may reach container addresses directly (Docker 28's
    # com.docker.network.bridge.trusted_host_interfaces).
    trusted_interfaces: tuple[str, ...] = ()
    # SNAT egress to this node address instead of masquerading (Docker's
    # com.docker.network.host_ipv4 / host_ipv6); nodes without the address masquerade.
    egress_address: ipaddress.IPv4Address | None = None
    egress_address6: ipaddress.IPv6Address | None = None

    @property
    def name(self) -> str:
        return self.meta.ref.name

    def contains(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv4Address):
            return address in self.subnet
        return self.subnet6 is not None and address in self.subnet6


@dataclass(frozen=True)
class AssignFrom:
    """Host ports the node picks (Docker's -p 80 and -p 8000-8100:80): `count` consecutive
    ports from start-end; start/end None: the node's ephemeral range (ip_local_port_range)."""

    start: int | None = None
    end: int | None = None
    count: int = 1

    def describe(self) -> str:
        where = "the ephemeral range" if self.start is None else f"{self.start}-{self.end}"
        return f"{self.count} port{'s' if self.count > 1 else ''} from {where}"


MAX_ASSIGN_COUNT = 1024


@dataclass(frozen=True)
class PortPublication:
    """hostIP None: every node address of the target's families; 0.0.0.0 or :: every address
    of that one family; anything else that one address.

    With `assign` the node picks the host ports: host_port is 0 until the planner resolves
    the publication with the node's assignment (core/assign.py), then the first port picked."""

    meta: Meta
    protocol: Protocol
    host_ip: IPAddress | None
    host_port: int
    host_port_end: int
    target_address: IPAddress
    target_port: int
    network: str | None = None
    loopback: LoopbackPolicy = LoopbackPolicy.AUTO
    node_selector: NodeSelector = field(default_factory=NodeSelector)
    # spec.target.address6: the same container's IPv6 address (target_address is then IPv4).
    target_address6: ipaddress.IPv6Address | None = None
    # Empty: every source. Otherwise only these clients connect (loadBalancerSourceRanges).
    allowed_sources: tuple[IPNetwork, ...] = ()
    assign: AssignFrom | None = None  # spec.hostPort absent: the node assigns the ports

    @property
    def unresolved(self) -> bool:
        """Assigned ports not yet picked: no host port to plan with."""
        return self.assign is not None and self.host_port == 0

    @property
    def port_count(self) -> int:
        return self.host_port_end - self.host_port + 1

    @property
    def targets(self) -> tuple[IPAddress, ...]:
        return (self.target_address,) + (
            (self.target_address6,) if self.target_address6 is not None else ()
        )

    @property
    def specific_host_ip(self) -> IPAddress | None:
        """The one address published on; None for every address (of one or both families)."""
        return None if self.host_ip is None or self.host_ip.is_unspecified else self.host_ip

    @property
    def families(self) -> tuple[int, ...]:
        """The host-side families this publication claims: its hostIP's, or with no hostIP
        those of its targets (a wildcard claims both families only when it targets both)."""
        if self.host_ip is not None:
            return (self.host_ip.version,)
        if self.target_address6 is None:
            return (self.target_address.version,)
        return (self.target_address.version, 6)

    def target_for(self, family: int) -> IPAddress:
        """The target serving host-side `family`: the same family's address when there is
        one; else (a loopback hostIP, which only the proxy serves) the other family's."""
        if family == 6 and self.target_address6 is not None:
            return self.target_address6  # target_address is then IPv4
        return self.target_address

    def describe(self) -> str:
        host = f"{hostport(self.host_ip)}:" if self.host_ip else ""
        ports = (
            f"{self.host_port}"
            if self.port_count == 1
            else (f"{self.host_port}-{self.host_port_end}")
        )
        if self.unresolved:
            assert self.assign is not None
            return f"{host}<{self.assign.describe()}>/{self.protocol.value}"
        assigned = " (assigned)" if self.assign is not None else ""
        return f"{host}{ports}/{self.protocol.value}{assigned}"


@dataclass(frozen=True)
class InvalidResource:
    """A document that could not be turned into a spec; `ref` is None if it has no identity."""

    ref: ResourceRef | None
    errors: tuple[str, ...]
    generation: int = 0
    uid: str = ""

    @property
    def message(self) -> str:
        prefix = f"{self.ref}: " if self.ref else ""
        return prefix + "; ".join(self.errors)


Spec = BridgeNetwork | PortPublication  # a valid resource
ParseResult = Spec | InvalidResource


def quote(value: Any) -> str:
    """A short, bounded repr of any value: what error messages show of bad input."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails (e.g. an int beyond Python's digit limit)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= QUOTE_CHARS + 8 else text[:QUOTE_CHARS] + "..."


def short(text: str, limit: int = 64) -> str:
    """A field name or other free text cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def bounded(errors: list[str]) -> tuple[str, ...]:
    """The first MAX_ERRORS errors, and how many more there were."""
    if len(errors) <= MAX_ERRORS:
        return tuple(errors)
    return (*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more errors")


def hostport(address: IPAddress) -> str:
    """An address as it stands before :port ([v6] in brackets)."""
    return f"[{address}]" if address.version == 6 else address_text(address)


def address_text(address: IPAddress) -> str:
    """str(address): for IPv4 in half the time (a full plan and render of 10,000
    publications write tens of thousands), and 0.0.0.0 without formatting at all."""
    if address.version == 6:
        return str(address)  # a scope (%eth0) included
    if int(address) == 0:
        return "0.0.0.0"
    return "%d.%d.%d.%d" % tuple(address.packed)  # noqa: UP031 (the fastest spelling)


def default_bridge_name(network_name: str) -> str:
    """bp-<name>, shortened with a stable hash when it would exceed 15 characters."""
    candidate = f"bp-{network_name}"
    if len(candidate) <= 15 and IFNAME.match(candidate):
        return candidate
    digest = hashlib.sha256(network_name.encode()).hexdigest()[:5]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "", network_name)[:6]
    return f"bp-{stem}-{digest}"


class _Fields:
    """Typed accessors over a mapping that record errors with their field path."""

    def __init__(self, data: Mapping[str, Any], path: str, errors: list[str]) -> None:
        self.data, self.path, self.errors = data, path, errors
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        key = short(key)
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.at(key)}: {message}")

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {type(value).__name__}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {quote(value)}")
            return default
        return value

    def integer(
        self,
        key: str,
        low: int,
        high: int,
        what: str,
        default: int | None = None,
        required: bool = False,
    ) -> int | None:
        value = self.raw(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"{quote(value)} is not {what} ({low}-{high})")
            return default
        if not low <= value <= high:
            self.error(key, f"{value} is not {what} ({low}-{high})")
            return default
        return value

    def enum(self, key: str, kind: type[_E], default: _E) -> _E:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, str) and value in {m.value for m in kind}:
            return kind(value)
        allowed = " | ".join(m.value for m in kind)
        self.error(key, f"{quote(value)} is not one of {allowed}")
        return default

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error(key, f"must be an object, not {type(value).__name__}")
            return None
        return value

    def reject_unknown(self) -> None:
        for key in sorted(set(self.data) - self.seen, key=str):
            self.error(str(key), "unknown field")


def _address(
    fields: _Fields, key: str, required: bool = False, wildcard: bool = False
) -> IPAddress | None:
    """A unicast address; with `wildcard`, 0.0.0.0 and :: are accepted too."""
    text = fields.string(key, required=required)
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        fields.error(key, f"{quote(text)} is not an IP address")
        return None
    if address.is_multicast or (address.is_unspecified and not wildcard):
        fields.error(key, f"{text} is not a unicast address")
        return None
    return address


# Subnets a bridge network may use, shared with the CRD's CEL rules (crds/, and the table in
# tests/deploy/test_crds.py checks both): no shorter than a /8 (/16), no longer than a /30 (/126),
# and never overlapping these. With those prefix bounds the first octet (hextet) decides,
# except 169.254/16 inside a 169.x/8../15.
PREFIX_BOUNDS = {4: (8, 30), 6: (16, 126)}
RESERVED_SUBNETS: dict[int, tuple[tuple[str, str], ...]] = {
    4: (
        ("0.0.0.0/8", "this network"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/3", "multicast and reserved"),
    ),
    6: (
        ("::/16", "unspecified, loopback and IPv4-mapped"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ),
}


@overload
def _network(
    fields: _Fields, key: str, version: Literal[4], required: bool
) -> ipaddress.IPv4Network | None: ...
@overload
def _network(
    fields: _Fields, key: str, version: Literal[6], required: bool
) -> ipaddress.IPv6Network | None: ...
def _network(
    fields: _Fields, key: str, version: int, required: bool
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = fields.string(key, required=required)
    if text is None:
        return None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        fields.error(key, f"{quote(text)} is not a CIDR ({short(str(exc).replace(text, '...'))})")
        return None
    if net.version != version:
        fields.error(key, f"{text} is not an IPv{version} CIDR")
        return None
    shortest, longest = PREFIX_BOUNDS[version]
    if net.prefixlen > longest:
        fields.error(key, f"{text} is too small for a bridge network (need at least a /30 or /126)")
        return None
    if net.prefixlen < shortest:
        fields.error(key, f"{text} is too large for a bridge network (at most a /{shortest})")
        return None
    for reserved, what in RESERVED_SUBNETS[version]:
        if net.overlaps(ipaddress.ip_network(reserved)):
            fields.error(key, f"{text} overlaps {reserved} ({what}), never a bridge network")
            return None
    return net


def _selector(fields: _Fields, key: str) -> NodeSelector:
    data = fields.mapping(key)
    if data is None:
        return NodeSelector()
    sel = _Fields(data, fields.at(key), fields.errors)
    labels: list[tuple[str, str]] = []
    match_labels = sel.mapping("matchLabels") or {}
    for k, v in sorted(match_labels.items(), key=lambda kv: str(kv[0])):
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            sel.error(f"matchLabels.{k}", "is not a valid label key")
        elif not isinstance(v, str) or not _LABEL_VALUE.match(v):
            sel.error(f"matchLabels.{k}", f"{quote(v)} is not a valid label value")
        else:
            labels.append((k, v))
    requirements: list[Requirement] = []
    expressions = sel.raw("matchExpressions") or []
    if not isinstance(expressions, list):
        sel.error("matchExpressions", "must be a list")
        expressions = []
    for i, expr in enumerate(expressions):
        path = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            sel.error(path, "must be an object")
            continue
        e = _Fields(expr, sel.at(path), fields.errors)
        req_key = e.string("key", required=True)
        op = e.string("operator", required=True)
        values = e.raw("values") or []
        e.reject_unknown()
        if op is not None and op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            e.error("operator", f"{quote(op)} is not one of In | NotIn | Exists | DoesNotExist")
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            e.error("values", "must be a list of strings")
            continue
        if op in ("In", "NotIn") and not values:
            e.error("values", f"must not be empty for operator {op}")
            continue
        if req_key is not None and op is not None:
            requirements.append(Requirement(req_key, op, tuple(values)))
    sel.reject_unknown()
    return NodeSelector(tuple(labels), tuple(requirements))


def _meta(doc: Mapping[str, Any], kind: str, errors: list[str]) -> Meta | None:
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        errors.append("metadata: is required")
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {quote(name)} is not a valid name (DNS-1123 subdomain)")
        return None
    namespace = ""
    if kind == PORT_PUBLICATION:
        namespace = metadata.get("namespace") or "default"
        if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
            errors.append(f"metadata.namespace: {quote(namespace)} is not a valid namespace")
            return None
    generation = metadata.get("generation", 1)
    created = metadata.get("creationTimestamp") or ""
    if isinstance(created, date):  # YAML reads an unquoted timestamp as a datetime
        created = created.isoformat()
    uid = metadata.get("uid") or ""
    return Meta(
        ref=ResourceRef(kind, namespace, name),
        generation=generation if isinstance(generation, int) else 1,
        created=short(created) if isinstance(created, str) else "",
        uid=short(uid) if isinstance(uid, str) else "",
    )


def parse(doc: Any) -> ParseResult:
    """Parse one resource document (a mapping as read from YAML/JSON or the API)."""
    if not isinstance(doc, Mapping):
        return InvalidResource(None, (f"document is a {type(doc).__name__}, not an object",))
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        return InvalidResource(None, (f"kind: {quote(kind)} is not one of {' | '.join(KINDS)}",))
    errors: list[str] = []
    meta = _meta(doc, kind, errors)
    if meta is None:
        return InvalidResource(None, tuple(f"{kind}: {e}" for e in errors))
    if doc.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: {quote(doc.get('apiVersion'))} is not {API_VERSION}")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        errors.append("spec: is required")
        return InvalidResource(meta.ref, bounded(errors), meta.generation, meta.uid)
    fields = _Fields(spec, "spec", errors)
    result: Spec | None = (
        _bridge_network(meta, fields) if kind == BRIDGE_NETWORK else _port_publication(meta, fields)
    )
    fields.reject_unknown()
    if errors or result is None:
        return InvalidResource(meta.ref, bounded(errors) or ("invalid",), meta.generation, meta.uid)
    return result


def _bridge_network(meta: Meta, f: _Fields) -> BridgeNetwork | None:
    bridge = f.string("bridge") or default_bridge_name(meta.ref.name)
    if not IFNAME.match(bridge) or bridge in (".", ".."):
        f.error(
            "bridge",
            f"{quote(bridge)} is not a valid interface name "
            "(1-15 characters of A-Z a-z 0-9 _ . -, not starting with a symbol)",
        )
    subnet: ipaddress.IPv4Network | None = _network(f, "subnet", 4, required=True)
    subnet6: ipaddress.IPv6Network | None = _network(f, "subnet6", 6, required=False)
    gateway = _gateway(f, "gateway", subnet)
    gateway6 = _gateway(f, "gateway6", subnet6) if subnet6 is not None else None
    if subnet6 is None and f.data.get("gateway6") is not None:
        f.error("gateway6", "requires spec.subnet6")
    mtu = f.integer("mtu", 68, 65535, "an MTU", default=1500)
    network = BridgeNetwork(
        meta=meta,
        bridge=bridge,
        subnet=subnet or ipaddress.IPv4Network("0.0.0.0/30"),
        gateway=gateway or ipaddress.IPv4Address(0),
        subnet6=subnet6,
        gateway6=gateway6,
        mtu=mtu or 1500,
        masquerade=f.boolean("masquerade", True),
        internal=f.boolean("internal", False),
        inter_container=f.boolean("interContainer", True),
        isolation=f.enum("isolation", Isolation, Isolation.ISOLATED),
        node_selector=_selector(f, "nodeSelector"),
        host_binding=_address(f, "hostBinding", wildcard=True),
        gateway_mode=f.enum("gatewayMode", GatewayMode, GatewayMode.NAT),
        gateway_mode6=f.enum("gatewayMode6", GatewayMode, GatewayMode.NAT),
        trusted_interfaces=_interfaces(f, "trustedInterfaces"),
        egress_address=_egress(f, "egressAddress", 4),
        egress_address6=_egress(f, "egressAddress6", 6),
    )
    if network.egress_address6 is not None and subnet6 is None:
        f.error("egressAddress6", "requires spec.subnet6")
    for key, address, mode in (
        ("egressAddress", network.egress_address, network.gateway_mode),
        ("egressAddress6", network.egress_address6, network.gateway_mode6),
    ):
        if address is not None and (
            not network.masquerade
            or network.internal
            or mode not in (GatewayMode.NAT, GatewayMode.NAT_UNPROTECTED)
        ):
            f.error(key, f"{key} needs masquerade: true, internal: false and a nat gateway mode")
    if network.trusted_interfaces and network.internal:
        f.error("trustedInterfaces", "has no effect on an internal network (nothing enters it)")
    for key, mode in (
        ("gatewayMode", network.gateway_mode),
        ("gatewayMode6", network.gateway_mode6),
    ):
        if mode is GatewayMode.ISOLATED and not network.internal:
            f.error(key, f"{key} isolated requires internal: true")
    return network if subnet is not None and gateway is not None else None


def _egress(f: _Fields, key: str, version: int) -> Any:
    address = _address(f, key)
    if address is not None and address.version != version:
        f.error(key, f"{address} is not an IPv{version} address")
        return None
    if address is not None and (address.is_loopback or address.is_link_local):
        f.error(key, f"{address} cannot be a source address for traffic leaving the node")
        return None
    return address


MAX_TRUSTED_INTERFACES = 32


def _interfaces(f: _Fields, key: str) -> tuple[str, ...]:
    """A short list of distinct interface names (sorted: their order means nothing)."""
    value = f.raw(key)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TRUSTED_INTERFACES:
        f.error(key, f"must be a list of at most {MAX_TRUSTED_INTERFACES} interface names")
        return ()
    names: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or not IFNAME.match(name) or name in (".", ".."):
            f.error(f"{key}[{i}]", f"{str(name)[:40]!r} is not a valid interface name")
        elif name in names:
            f.error(f"{key}[{i}]", f"{name} is listed twice")
        else:
            names.add(name)
    return tuple(sorted(names))


@overload
def _gateway(
    f: _Fields, key: str, subnet: ipaddress.IPv4Network | None
) -> ipaddress.IPv4Address | None: ...
@overload
def _gateway(
    f: _Fields, key: str, subnet: ipaddress.IPv6Network
) -> ipaddress.IPv6Address | None: ...
def _gateway(
    f: _Fields, key: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None
) -> IPAddress | None:
    if subnet is None:
        f.raw(key)
        return None
    address = _address(f, key)
    if address is None:  # absent: the first host (subnets are at least a /30 or /126)
        return None if f.data.get(key) is not None else subnet.network_address + 1
    if address not in subnet:
        f.error(key, f"{address} is not inside {subnet}")
        return None
    if address == subnet.network_address or (
        subnet.version == 4 and address == subnet.broadcast_address
    ):
        f.error(key, f"{address} is not a host address of {subnet}")
        return None
    return address


def _port_publication(meta: Meta, f: _Fields) -> PortPublication | None:
    protocol = f.enum("protocol", Protocol, Protocol.TCP)
    host_ip = _address(f, "hostIP", wildcard=True)
    assign = _assign_from(f)
    host_port = f.integer("hostPort", 1, 65535, "a port")
    host_port_end = f.integer("hostPortEnd", 1, 65535, "a port")
    if assign is not None and (host_port is not None or host_port_end is not None):
        f.error(
            "assignFrom",
            "is not allowed with spec.hostPort or spec.hostPortEnd (give "
            "the host port, or let the node assign one)",
        )
    if host_port is None and host_port_end is not None:
        f.error("hostPortEnd", "requires spec.hostPort")
    if host_port is None and f.data.get("hostPort") is None:
        assign = assign or AssignFrom()  # no host port: the node assigns one (-p 80)
    if assign is not None:
        host_port, host_port_end = 0, assign.count - 1
    network = f.string("network")
    if network is not None and not _DNS_SUBDOMAIN.match(network):
        f.error("network", f"{quote(network)} is not a valid BridgeNetwork name")
    loopback = f.enum("loopback", LoopbackPolicy, LoopbackPolicy.AUTO)
    selector = _selector(f, "nodeSelector")
    sources = _sources(f, "allowedSources")
    target = f.mapping("target")
    target_address: IPAddress | None = None
    target_address6: IPAddress | None = None
    target_port: int | None = None
    if target is None:
        f.error("target", "is required")
    else:
        t = _Fields(target, f.at("target"), f.errors)
        target_address = _address(t, "address", required=True)
        target_address6 = _address(t, "address6")
        target_port = t.integer("port", 1, 65535, "a port", required=True)
        t.reject_unknown()
        if not _dual_stack_ok(t, target_address, target_address6, host_ip):
            return None
    if host_port is None or target_address is None or target_port is None:
        return None
    end = host_port if host_port_end is None else host_port_end
    if assign is not None:
        end = assign.count - 1
    elif end < host_port:
        f.error("hostPortEnd", f"{end} is below spec.hostPort {host_port}")
        return None
    if target_port + (end - host_port) > 65535:
        f.error("target.port", f"range {target_port}-{target_port + end - host_port} exceeds 65535")
        return None
    if (
        host_ip is not None
        and host_ip.version != target_address.version
        and (not host_ip.is_loopback)
    ):
        f.error(
            "hostIP",
            f"IPv{host_ip.version} host IP {host_ip} cannot be NATed to IPv"
            f"{target_address.version} target {target_address}",
        )
        return None
    return PortPublication(
        meta=meta,
        protocol=protocol,
        host_ip=host_ip,
        host_port=host_port,
        host_port_end=end,
        target_address=target_address,
        target_port=target_port,
        network=network,
        loopback=loopback,
        node_selector=selector,
        target_address6=target_address6
        if isinstance(target_address6, ipaddress.IPv6Address)
        else None,
        allowed_sources=sources,
        assign=assign,
    )


def _assign_from(f: _Fields) -> AssignFrom | None:
    """spec.assignFrom: {start, end} (both or neither), count (default 1) fitting in them."""
    data = f.mapping("assignFrom")
    if data is None:
        return None
    a = _Fields(data, f.at("assignFrom"), f.errors)
    start = a.integer("start", 1, 65535, "a port")
    end = a.integer("end", 1, 65535, "a port")
    count = a.integer("count", 1, MAX_ASSIGN_COUNT, "a port count", default=1) or 1
    a.reject_unknown()
    if (data.get("start") is None) != (data.get("end") is None):
        a.error("end" if data.get("start") is not None else "start", "start and end go together")
        return None
    if start is not None and end is not None:
        if end < start:
            a.error("end", f"{end} is below start {start}")
            return None
        if count > end - start + 1:
            a.error("count", f"{count} ports do not fit in {start}-{end}")
            return None
    return AssignFrom(start, end, count)


def _dual_stack_ok(
    t: _Fields, address: IPAddress | None, address6: IPAddress | None, host_ip: IPAddress | None
) -> bool:
    """target.address6 is the IPv6 half of a dual-stack target: address is then IPv4, and
    hostIP (which picks one family) is absent or loopback, so both halves are used."""
    if address6 is None:
        return True
    if address6.version != 6:
        t.error("address6", f"{address6} is not an IPv6 address")
        return False
    if address is not None and address.version != 4:
        t.error("address6", f"requires an IPv4 {t.at('address')}, not {address}")
        return False
    if host_ip is not None and not host_ip.is_loopback:
        t.error(
            "address6",
            f"is unused: hostIP {host_ip} publishes IPv{host_ip.version} "
            "only; omit hostIP to publish both families",
        )
        return False
    return True


def _sources(f: _Fields, key: str) -> tuple[IPNetwork, ...]:
    """CIDRs, host bits clear, at most MAX_ALLOWED_SOURCES; overlapping ones merged."""
    value = f.raw(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        f.error(key, "must be a list of CIDRs")
        return ()
    if len(value) > MAX_ALLOWED_SOURCES:
        f.error(key, f"{len(value)} entries; at most {MAX_ALLOWED_SOURCES}")
        return ()
    nets: list[IPNetwork] = []
    for i, text in enumerate(value):
        if not isinstance(text, str) or len(text) > 49 or "/" not in text:
            f.error(f"{key}[{i}]", "must be a CIDR such as 10.0.0.0/8 or fd00::/64")
            continue
        try:
            nets.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            f.error(f"{key}[{i}]", f"{text!r} is not a CIDR ({exc})")
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))
