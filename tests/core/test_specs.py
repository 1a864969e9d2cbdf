"""Parsing resource documents into typed specs.

Scenarios: defaults filled in; every bad field named with resource and path; unknown fields
rejected; cross-field rules (range order, gateway in subnet, families); derived bridge names
stay valid interface names; selectors match labels like Kubernetes does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridgeport.core import specs
from tests.builders import network, publication


def pub(**spec: Any) -> dict[str, Any]:
    return publication("web", 8080, **spec)


def net(**spec: Any) -> dict[str, Any]:
    return network("br0", **{"subnet": "192.168.99.0/24", **spec})


def errors(doc: dict[str, Any]) -> str:
    result = specs.parse(doc)
    assert isinstance(result, specs.InvalidResource), result
    return result.message


def test_network_defaults() -> None:
    """A minimal network gets Docker's defaults: first host as gateway, masquerade, isolated."""
    n = specs.parse(net())
    assert isinstance(n, specs.BridgeNetwork)
    assert n.bridge == "bp-br0"
    assert n.gateway == ipaddress.IPv4Address("192.168.99.1")
    assert (n.mtu, n.masquerade, n.internal, n.inter_container) == (1500, True, False, True)
    assert n.isolation is specs.Isolation.ISOLATED


def test_publication_defaults() -> None:
    """A minimal publication is TCP, single port, wildcard host IP, loopback Auto."""
    p = specs.parse(pub())
    assert isinstance(p, specs.PortPublication)
    assert (p.protocol, p.host_ip, p.host_port_end, p.loopback) == (
        specs.Protocol.TCP,
        None,
        8080,
        specs.LoopbackPolicy.AUTO,
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            pub(target={"address": "10.0.0.2", "port": 70000}),
            "PortPublication default/web: spec.target.port: 70000 is not a port (1-65535)",
        ),
        (pub(hostPort=0), "spec.hostPort: 0 is not a port (1-65535)"),
        (pub(hostPort="80"), "spec.hostPort: '80' is not a port (1-65535)"),
        (pub(hostPortEnd=8000), "spec.hostPortEnd: 8000 is below spec.hostPort 8080"),
        (pub(hostIP="300.1.1.1"), "spec.hostIP: '300.1.1.1' is not an IP address"),
        (pub(protocol="ICMP"), "spec.protocol: 'ICMP' is not one of TCP | UDP | SCTP"),
        (
            pub(loopback="Sometimes"),
            "spec.loopback: 'Sometimes' is not one of Auto | Always | Never",
        ),
        (pub(colour="blue"), "spec.colour: unknown field"),
        (pub(target={"address": "10.0.0.2", "port": 80, "x": 1}), "spec.target.x: unknown field"),
        (pub(target=None), "spec.target: is required"),
        (pub(hostIP="2001:db8::1"), "spec.hostIP: IPv6 host IP 2001:db8::1 cannot be NATed"),
        (pub(hostIP="::"), "spec.hostIP: IPv6 host IP :: cannot be NATed to IPv4 target"),
        (pub(hostIP="224.0.0.1"), "spec.hostIP: 224.0.0.1 is not a unicast address"),
        (
            pub(target={"address": "0.0.0.0", "port": 80}),
            "spec.target.address: 0.0.0.0 is not a unicast address",
        ),
        (
            pub(target={"address": "10.0.0.2", "address6": "10.0.0.3", "port": 80}),
            "spec.target.address6: 10.0.0.3 is not an IPv6 address",
        ),
        (
            pub(target={"address": "fd00::2", "address6": "fd00::3", "port": 80}),
            "spec.target.address6: requires an IPv4 spec.target.address, not fd00::2",
        ),
        (
            pub(target={"address": "10.0.0.2", "address6": "::", "port": 80}),
            "spec.target.address6: :: is not a unicast address",
        ),
        (
            pub(
                hostIP="0.0.0.0", target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80}
            ),
            "spec.target.address6: is unused: hostIP 0.0.0.0 publishes IPv4 only; omit hostIP",
        ),
        (
            pub(hostIP="::1", target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80}),
            None,
        ),
        (
            pub(hostPort=65535, hostPortEnd=65535, target={"address": "10.0.0.2", "port": 65535}),
            None,
        ),
        (
            pub(hostPort=100, hostPortEnd=200, target={"address": "10.0.0.2", "port": 65500}),
            "spec.target.port: range 65500-65600 exceeds 65535",
        ),
        (net(subnet="192.168.99.1/24"), "spec.subnet: '192.168.99.1/24' is not a CIDR"),
        (net(subnet="fd00::/64"), "spec.subnet: fd00::/64 is not an IPv4 CIDR"),
        (net(gateway="10.0.0.1"), "spec.gateway: 10.0.0.1 is not inside 192.168.99.0/24"),
        (net(gateway="192.168.99.255"), "spec.gateway: 192.168.99.255 is not a host address"),
        (
            net(bridge="this-name-is-too-long"),
            "spec.bridge: 'this-name-is-too-long' is not a valid",
        ),
        (net(bridge="br;drop"), "spec.bridge: 'br;drop' is not a valid interface name"),
        (net(mtu=10), "spec.mtu: 10 is not an MTU (68-65535)"),
        (net(masquerade="yes"), "spec.masquerade: must be true or false, not 'yes'"),
        (net(isolation="Open"), "spec.isolation: 'Open' is not one of Isolated | Shared"),
        (
            net(nodeSelector={"matchLabels": {"bad key!": "x"}}),
            "spec.nodeSelector.matchLabels.bad key!: is not a valid label key",
        ),
        (
            net(nodeSelector={"matchExpressions": [{"key": "a", "operator": "Near"}]}),
            "spec.nodeSelector.matchExpressions[0].operator: 'Near' is not one of",
        ),
    ],
)
def test_bad_fields_are_named(doc: dict[str, Any], message: str | None) -> None:
    """Each bad field yields a message naming the resource and the field path."""
    if message is None:
        assert not isinstance(specs.parse(doc), specs.InvalidResource)
    else:
        assert message in errors(doc)


@pytest.mark.parametrize(
    ("spec", "families", "specific", "targets"),
    [
        ({}, (4,), None, {4: "10.0.0.2"}),
        ({"hostIP": "0.0.0.0"}, (4,), None, {4: "10.0.0.2"}),
        (
            {"hostIP": "::", "target": {"address": "fd00::2", "port": 80}},
            (6,),
            None,
            {6: "fd00::2"},
        ),
        (
            {"target": {"address": "10.0.0.2", "address6": "fd00::2", "port": 80}},
            (4, 6),
            None,
            {4: "10.0.0.2", 6: "fd00::2"},
        ),
        ({"hostIP": "192.0.2.1"}, (4,), "192.0.2.1", {4: "10.0.0.2"}),
        ({"hostIP": "::1"}, (6,), "::1", {6: "10.0.0.2"}),  # the proxy bridges families
        (
            {"hostIP": "::1", "target": {"address": "10.0.0.2", "address6": "fd00::2", "port": 80}},
            (6,),
            "::1",
            {6: "fd00::2"},
        ),
    ],
)
def test_families_and_targets(
    spec: dict[str, Any], families: tuple[int, ...], specific: str | None, targets: dict[int, str]
) -> None:
    """A wildcard claims the families it targets; 0.0.0.0 and :: one family; an address its
    own; each family is served by the target of that family (loopback: whichever exists)."""
    p = specs.parse(pub(**spec))
    assert isinstance(p, specs.PortPublication), p
    assert p.families == families
    assert p.specific_host_ip == (ipaddress.ip_address(specific) if specific else None)
    assert {f: str(p.target_for(f)) for f in p.families} == targets


def test_bad_identity() -> None:
    """Documents without a usable identity are invalid without a ref, and say why."""
    assert specs.parse([1, 2]).message == "document is a list, not an object"  # type: ignore[union-attr]
    assert "kind: 'Pod' is not one of" in errors({"kind": "Pod"})
    assert "metadata.name: 'Bad_Name'" in errors(
        {"kind": "BridgeNetwork", "metadata": {"name": "Bad_Name"}}
    )


def test_wrong_api_version() -> None:
    """Another apiVersion is refused rather than guessed at."""
    doc = net()
    doc["apiVersion"] = "bridgeport.io/v2"
    assert "apiVersion: 'bridgeport.io/v2' is not bridgeport.io/v1alpha1" in errors(doc)


@given(st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,60}[a-z0-9])?", fullmatch=True))
def test_default_bridge_names_are_valid(name: str) -> None:
    """Any valid resource name derives a valid, deterministic interface name."""
    derived = specs.default_bridge_name(name)
    assert specs.IFNAME.match(derived) and len(derived) <= 15
    assert derived == specs.default_bridge_name(name)


def test_selector_semantics() -> None:
    """matchLabels and matchExpressions follow metav1.LabelSelector semantics."""
    n = specs.parse(
        net(
            nodeSelector={
                "matchLabels": {"zone": "a"},
                "matchExpressions": [
                    {"key": "edge", "operator": "Exists"},
                    {"key": "tier", "operator": "NotIn", "values": ["db"]},
                ],
            }
        )
    )
    assert isinstance(n, specs.BridgeNetwork)
    sel = n.node_selector
    assert sel.matches({"zone": "a", "edge": ""})
    assert not sel.matches({"zone": "a"})
    assert not sel.matches({"zone": "a", "edge": "1", "tier": "db"})
    assert specs.NodeSelector().matches({})


def test_address_text_is_str() -> None:
    """The fast formatting of addresses writes what str() writes."""
    for text in (
        "0.0.0.0",
        "10.78.0.2",
        "255.255.255.255",
        "127.0.0.1",
        "::",
        "::1",
        "fd00:9::2",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
    ):
        address = ipaddress.ip_address(text)
        assert specs.address_text(address) == str(address), text
