"""The planner: resources + node facts -> NodePlan.

Scenarios: oldest wins conflicts (ties by namespace/name) and the loser names the winner;
wildcard vs specific host IP; overlapping ranges; protocol separates claims; subnet overlap and
bridge-name clashes; foreign interfaces; node selectors; host IP not local; network references;
internal networks; proxy policy (Auto/Always/Never, loopback host IP, forwarding off);
host processes holding a port (PortInUse); dual stack (claims per family, one publication
for both, 0.0.0.0 and :: as one-family wildcards); interContainer: false leaving the
bridge's own traffic to the proxy. Properties: deterministic, independent of input order, at
most one winner per claimed port and family.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core import planner, ruleset, specs
from bridgeport.core.plan import NodeFacts
from tests.core.parsed import ADDRESSES, NODE, message, net, pub, states

DUAL = {"address": "10.0.0.2", "address6": "fd00::2", "port": 80}
V6 = {"address": "fd00::2", "port": 80}


def test_oldest_wins_and_loser_names_winner() -> None:
    """Two claims on 8080/TCP: the older is applied, the younger names it."""
    plan = planner.plan(
        [pub("young", 8080, "2026-02-01T00:00:00Z"), pub("old", 8080, "2026-01-01T00:00:00Z")], NODE
    )
    assert states(plan) == {
        "old": ("Applied", "Programmed"),
        "young": ("Conflicted", "PortConflict"),
    }
    assert "PortPublication default/old" in message(plan, "young")
    assert len(plan.dnats) == 1 and plan.dnats[0].owner.name == "old"


def test_tie_broken_by_namespace_then_name() -> None:
    """Equal creation times: namespace/name order decides."""
    plan = planner.plan([pub("b", 80, ns="x"), pub("a", 80, ns="y"), pub("z", 80, ns="a")], NODE)
    assert states(plan)["z"] == ("Applied", "Programmed")


def test_wildcard_conflicts_with_specific_host_ip() -> None:
    """A wildcard claim overlaps every host IP on that port; distinct host IPs coexist."""
    plan = planner.plan(
        [
            pub("a", 80, "1", hostIP="192.0.2.1"),
            pub("b", 80, "2", hostIP="192.0.2.11"),
            pub("c", 80, "3"),
        ],
        NODE,
    )
    assert [s for s, _ in (states(plan)[n] for n in "abc")] == ["Applied", "Applied", "Conflicted"]


def test_overlapping_ranges_and_protocols() -> None:
    """Ranges overlapping by one port conflict; the same port over UDP does not."""
    plan = planner.plan(
        [
            pub("r1", 9000, "1", hostPortEnd=9010),
            pub("r2", 9010, "2", hostPortEnd=9020),
            pub("single", 9005, "3"),
            pub("udp", 9005, "4", protocol="UDP"),
            pub("after", 9011, "5"),
        ],
        NODE,
    )
    assert states(plan) == {
        "r1": ("Applied", "Programmed"),
        "r2": ("Conflicted", "PortConflict"),
        "single": ("Conflicted", "PortConflict"),
        "udp": ("Applied", "Programmed"),
        "after": ("Applied", "Programmed"),
    }


def test_network_conflicts() -> None:
    """Overlapping subnets and shared bridge names lose to the older network."""
    plan = planner.plan(
        [
            net("a", "10.0.0.0/16", "1"),
            net("b", "10.0.5.0/24", "2"),
            net("c", "10.1.0.0/24", "3", bridge="bp-a"),
            net("d", "10.2.0.0/24", "4", bridge="eth0"),
        ],
        NodeFacts("n", foreign_interfaces=frozenset({"eth0"})),
    )
    assert states(plan) == {
        "a": ("Applied", "Programmed"),
        "b": ("Conflicted", "SubnetOverlap"),
        "c": ("Conflicted", "BridgeNameInUse"),
        "d": ("Conflicted", "InterfaceInUse"),
    }
    assert "10.0.0.0/16 of BridgeNetwork a" in message(plan, "b")
    assert [b.name for b in plan.bridges] == ["bp-a"]


def test_node_selector_and_host_ip() -> None:
    """Selector mismatch and a non-local host IP are Inactive with reasons."""
    plan = planner.plan(
        [
            pub("other-zone", 80, nodeSelector={"matchLabels": {"zone": "b"}}),
            pub("remote", 81, hostIP="203.0.113.5"),
            net("n", "10.9.0.0/24", nodeSelector={"matchLabels": {"zone": "b"}}),
        ],
        NODE,
    )
    assert states(plan) == {
        "other-zone": ("Inactive", "NodeSelectorMismatch"),
        "remote": ("Inactive", "HostIPNotLocal"),
        "n": ("Inactive", "NodeSelectorMismatch"),
    }


def test_network_references() -> None:
    """Unknown network and target outside it are Invalid; an inactive network makes it wait."""
    plan = planner.plan(
        [
            net("here", "10.0.0.0/24"),
            net("away", "10.5.0.0/24", nodeSelector={"matchLabels": {"zone": "z"}}),
            pub("missing", 80, network="nope"),
            pub("outside", 81, network="here", target={"address": "10.9.9.9", "port": 80}),
            pub("waiting", 82, network="away", target={"address": "10.5.0.2", "port": 80}),
            pub("ok", 83, network="here"),
        ],
        NODE,
    )
    s = states(plan)
    assert s["missing"] == ("Invalid", "NetworkNotFound")
    assert s["outside"] == ("Invalid", "TargetOutsideNetwork")
    assert s["waiting"] == ("Inactive", "NetworkNotReady")
    assert s["ok"] == ("Applied", "Programmed")


def test_internal_network_publishes_nothing() -> None:
    """A target inside an internal network (named or inferred) is not published."""
    plan = planner.plan([net("int", "10.0.0.0/24", internal=True), pub("p", 80)], NODE)
    assert states(plan)["p"] == ("Inactive", "InternalNetwork")
    assert not plan.dnats


def test_proxy_policy() -> None:
    """Auto: loopback listeners (IPv4's widened to 0.0.0.0, where it also holds the DNATed
    port); Always: wildcard; Never: none; loopback host IP: proxy only."""
    plan = planner.plan(
        [
            pub("auto", 80),
            pub("always", 81, loopback="Always"),
            pub("never", 82, loopback="Never"),
            pub("lo", 83, hostIP="127.0.0.1"),
            pub("lo-never", 84, hostIP="127.0.0.1", loopback="Never"),
        ],
        NODE,
    )
    listens = {(p.owner.name, str(p.listen)) for p in plan.proxies}
    assert listens == {("auto", "0.0.0.0"), ("always", "0.0.0.0"), ("lo", "127.0.0.1")}
    assert {d.owner.name for d in plan.dnats} == {"auto", "always", "never"}
    assert states(plan)["lo-never"] == ("Inactive", "LoopbackNeedsProxy")


def test_no_forwarding_moves_everything_to_the_proxy() -> None:
    """IPv4 forwarding off: no IPv4 DNAT; Auto proxies the wildcard; Never is inactive."""
    facts = NodeFacts("n", addresses=NODE.addresses, ipv4_forwarding=False)
    plan = planner.plan(
        [pub("auto", 80), pub("bound", 81, hostIP="192.0.2.1"), pub("never", 82, loopback="Never")],
        facts,
    )
    assert not plan.dnats
    assert {(p.owner.name, str(p.listen), p.why) for p in plan.proxies} == {
        ("auto", "0.0.0.0", "no-forwarding"),
        ("bound", "192.0.2.1", "no-forwarding"),
    }
    assert states(plan)["never"] == ("Inactive", "IPForwardingDisabled")


def test_dual_stack_claims_are_per_family() -> None:
    """One port, one publication per family: no conflict. A dual-stack publication claims
    both families, so it loses to either; each family goes to its own target."""
    plan = planner.plan(
        [
            pub("v4", 80, "1"),
            pub("v6", 80, "2", target=V6),
            pub("dual", 80, "3", target=DUAL),
            pub("dual2", 81, "4", target=DUAL),
        ],
        NODE,
    )
    assert states(plan) == {
        "v4": ("Applied", "Programmed"),
        "v6": ("Applied", "Programmed"),
        "dual": ("Conflicted", "PortConflict"),
        "dual2": ("Applied", "Programmed"),
    }
    assert "(IPv4) published by PortPublication default/v4" in message(plan, "dual")
    assert {(d.owner.name, d.family, str(d.target)) for d in plan.dnats} == {
        ("v4", 4, "10.0.0.2"),
        ("v6", 6, "fd00::2"),
        ("dual2", 4, "10.0.0.2"),
        ("dual2", 6, "fd00::2"),
    }
    # Loopback and link-local are left to the proxy: 0.0.0.0 (127.0.0.0/8; the listener also
    # holds what the DNAT captures), and :: (::1 and fe80::/10).
    assert {(p.owner.name, str(p.listen), str(p.target), p.why) for p in plan.proxies} == {
        ("v4", "0.0.0.0", "10.0.0.2", "loopback"),
        ("v6", "::", "fd00::2", "loopback+link-local"),
        ("dual2", "0.0.0.0", "10.0.0.2", "loopback"),
        ("dual2", "::", "fd00::2", "loopback+link-local"),
    }
    assert message(plan, "dual2") == (
        "81/TCP -> 10.0.0.2:80 via kernel DNAT and proxy on 0.0.0.0; "
        "[fd00::2]:80 via kernel DNAT and proxy on ::"
    )


def test_family_wildcards() -> None:
    """0.0.0.0 and :: are one family's wildcard: each conflicts with every address of its
    family (and with a both-families wildcard), never with the other family."""
    plan = planner.plan(
        [
            pub("any4", 80, "1", hostIP="0.0.0.0"),
            pub("any6", 80, "2", hostIP="::", target=V6),
            pub("one4", 80, "3", hostIP="192.0.2.11"),
            pub("one6", 80, "4", hostIP="2001:db8::11", target=V6),
            pub("both", 80, "5", target=DUAL),
            pub("one6-first", 81, "1", hostIP="2001:db8::1", target=V6),
            pub("any4-81", 81, "2", hostIP="0.0.0.0"),
            pub("any6-81", 81, "3", hostIP="::", target=V6),
        ],
        NODE,
    )
    assert states(plan) == {
        "any4": ("Applied", "Programmed"),
        "any6": ("Applied", "Programmed"),
        "one4": ("Conflicted", "PortConflict"),
        "one6": ("Conflicted", "PortConflict"),
        "both": ("Conflicted", "PortConflict"),
        "one6-first": ("Applied", "Programmed"),
        "any4-81": ("Applied", "Programmed"),
        "any6-81": ("Conflicted", "PortConflict"),
    }
    assert "default/any4" in message(plan, "one4")
    assert "default/any6" in message(plan, "one6")
    assert "default/one6-first" in message(plan, "any6-81")
    assert {(d.owner.name, d.family, d.host_ip) for d in plan.dnats if d.port == 80} == {
        ("any4", 4, None),
        ("any6", 6, None),
    }
    assert {(p.owner.name, str(p.listen)) for p in plan.proxies if p.port == 80} == {
        ("any4", "0.0.0.0"),
        ("any6", "::"),
    }


def test_icc_off_leaves_own_bridge_traffic_to_the_proxy() -> None:
    """interContainer: false: the bridge's own traffic to its published ports skips DNAT
    and goes to a proxy on the published addresses; unless the proxy cannot serve it
    (loopback: Never, SCTP, --no-proxy), where DNAT stays as it was."""
    quiet = net("quiet", "10.0.0.0/24", subnet6="fd00::/64", interContainer=False)
    resources = [
        quiet,
        pub("dual", 80, target=DUAL),
        pub("bound", 81, hostIP="192.0.2.1"),
        pub("never", 82, loopback="Never"),
        pub("sctp", 83, protocol="SCTP"),
    ]
    plan = planner.plan(resources, NODE)
    assert {(d.owner.name, d.family, d.proxy_from) for d in plan.dnats} == {
        ("dual", 4, "bp-quiet"),
        ("dual", 6, "bp-quiet"),
        ("bound", 4, "bp-quiet"),
        ("never", 4, ""),
        ("sctp", 4, ""),
    }
    assert {(p.owner.name, str(p.listen), p.why) for p in plan.proxies} == {
        ("dual", "0.0.0.0", "icc-off"),
        ("dual", "::", "icc-off"),
        ("bound", "192.0.2.1", "icc-off"),
    }
    tables = "".join(t.text() for t in ruleset.render(plan))
    assert '"bp-quiet" . 192.0.2.1 . tcp . 81 comment "default/bound"' in tables
    no_proxy = planner.plan(resources, replace(NODE, userland_proxy=False))
    assert {d.proxy_from for d in no_proxy.dnats} == {""}
    chatty = planner.plan([net("chatty", "10.0.0.0/24"), pub("web", 80)], NODE)
    assert {d.proxy_from for d in chatty.dnats} == {""}
    assert {str(p.listen) for p in chatty.proxies} == {"0.0.0.0"}


def test_port_in_use_is_conflicted_without_dnat() -> None:
    """A port a host process holds: Conflicted/PortInUse, no DNAT shadows the process."""
    p = pub("web", 80)
    facts = NodeFacts("n", ports_in_use={p.meta.ref: "127.0.0.1:80/TCP is already in use"})
    plan = planner.plan([p], facts)
    assert states(plan)["web"] == ("Conflicted", "PortInUse")
    assert not plan.dnats and not plan.proxies


def test_invalid_and_duplicates() -> None:
    """Invalid documents keep their name; a duplicate definition is reported, first one used."""
    plan = planner.plan(
        [pub("ok", 80), pub("ok", 81), specs.parse({"kind": "Nope"}), pub("bad", 0)], NODE
    )
    assert states(plan)["bad"] == ("Invalid", "InvalidSpec")
    assert len(plan.dnats) == 1
    assert any("defined more than once" in e for e in plan.errors)
    assert any("Nope" in e for e in plan.errors)


# --- properties --------------------------------------------------------------------------

claims = st.lists(
    st.tuples(
        st.sampled_from(["TCP", "UDP"]),
        st.sampled_from([None, "0.0.0.0", "::", *ADDRESSES]),
        st.integers(1000, 1030),
        st.integers(0, 5),
        st.sampled_from(["", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["4", "6", "dual"]),
    ),
    max_size=12,
)
TARGETS = {"4": {"address": "10.0.0.2", "port": 80}, "6": V6, "dual": DUAL}


def build(items: list[tuple[Any, ...]]) -> list[Any]:
    out = [net("n", "10.0.0.0/24", subnet6="fd00::/64")]
    for i, (proto, host, port, span, created, ns, family) in enumerate(items):
        extra: dict[str, Any] = {
            "protocol": proto,
            "hostPortEnd": port + span,
            "target": TARGETS[family],
        }
        if host:
            extra["hostIP"] = host
        out.append(pub(f"p{i}", port, created, ns, **extra))
    return out


@settings(max_examples=150, deadline=None)
@given(claims, st.randoms(use_true_random=False))
def test_input_order_never_matters(items: list[tuple[Any, ...]], rnd: Any) -> None:
    """Any permutation of the same resources yields the identical plan and ruleset."""
    resources = build(items)
    shuffled = list(resources)
    rnd.shuffle(shuffled)
    a, b = planner.plan(resources, NODE), planner.plan(shuffled, NODE)
    assert a == b
    assert [t.text() for t in ruleset.render(a)] == [t.text() for t in ruleset.render(b)]


@settings(max_examples=150, deadline=None)
@given(claims)
def test_no_port_is_claimed_twice(items: list[tuple[Any, ...]]) -> None:
    """Among applied publications no two overlapping claims coexist, in either family."""
    plan = planner.plan(build(items), NODE)
    seen: set[tuple[str, str, int]] = set()
    for d in plan.dnats:
        family = [a for a in ADDRESSES if ipaddress.ip_address(a).version == d.family]
        for port in range(d.port, d.port_end + 1):
            for host in [str(d.host_ip)] if d.host_ip else family:
                key = (d.protocol.value, host, port)
                assert key not in seen
                seen.add(key)


def test_subnet6_on_a_node_without_ipv6_applies_the_ipv4_side() -> None:
    """IPv6 off on the node: the bridge keeps its IPv4 address and rules, subnet6 is skipped
    (reason IPv6Disabled, Applied), an IPv6 publication is Inactive, an IPv4 one works."""
    from dataclasses import replace

    no6 = replace(NODE, ipv6=False)
    dual = net("dual", "10.0.0.0/24", bridge="bp-dual", subnet6="fd00:1::/64")
    v4 = pub("v4", 8080, network="dual")
    v6 = pub("v6", 8081, network="dual", target={"address": "fd00:1::2", "port": 80})
    plan = planner.plan([dual, v4, v6], no6)
    assert states(plan) == {
        "dual": ("Applied", "IPv6Disabled"),
        "v4": ("Applied", "Programmed"),
        "v6": ("Inactive", "IPv6Disabled"),
    }
    assert "subnet6 fd00:1::/64 not applied" in message(plan, "dual")
    (bridge,) = plan.bridges
    assert [str(a) for a in bridge.addresses] == ["10.0.0.1/24"]
    assert bridge.subnet6 is None
    assert [d.owner.name for d in plan.dnats] == ["v4"]
    # With IPv6 on, the same resources program both families.
    plan6 = planner.plan([dual, v4, v6], NODE)
    assert states(plan6)["dual"] == ("Applied", "Programmed")
    assert states(plan6)["v6"] == ("Applied", "Programmed")
    assert len(plan6.bridges[0].addresses) == 2
