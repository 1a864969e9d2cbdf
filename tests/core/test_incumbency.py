"""Incumbency (issue 11, case 7): what is Applied on a node keeps its claims.

Scenarios: a newcomer with an overlapping subnet loses to the applied network whatever the
names or creation times; the same for ports; two incumbents fall back to age and name;
first-seen times stand in for creation times in standalone mode and persist.
"""

from __future__ import annotations

from dataclasses import replace

from bridgeport.core import firstseen, planner, specs
from bridgeport.core.plan import NodeFacts
from tests.core.parsed import NODE, message, net, pub, states


def ref(res: object) -> specs.ResourceRef:
    assert not isinstance(res, specs.InvalidResource), res
    return res.meta.ref  # type: ignore[attr-defined,no-any-return]


def test_applied_network_keeps_its_subnet_against_any_newcomer() -> None:
    """Standalone: no timestamps, so before this the name decided; and a newer resource
    name-sorted first took the subnet, and the working bridge was deleted."""
    working, newcomer = net("zz-working", "10.0.0.0/24"), net("aa-new", "10.0.0.0/16")
    facts = replace(NodeFacts("n"), incumbents=frozenset({ref(working)}))
    plan = planner.plan([newcomer, working], facts)
    assert states(plan) == {
        "zz-working": ("Applied", "Programmed"),
        "aa-new": ("Conflicted", "SubnetOverlap"),
    }
    assert [b.network for b in plan.bridges] == ["zz-working"]


def test_incumbent_beats_an_older_newcomer() -> None:
    """Kubernetes: an older network whose nodeSelector now matches does not evict the one
    that works here."""
    young = net("young", "10.0.0.0/24", "2026-02-01T00:00:00Z")
    old = net("old", "10.0.0.0/24", "2026-01-01T00:00:00Z")
    plan = planner.plan([old, young], replace(NodeFacts("n"), incumbents=frozenset({ref(young)})))
    assert states(plan)["young"] == ("Applied", "Programmed")
    assert states(plan)["old"] == ("Conflicted", "SubnetOverlap")


def test_applied_publication_keeps_its_port() -> None:
    young = pub("young", 8080, "2026-02-01T00:00:00Z")
    old = pub("old", 8080, "2026-01-01T00:00:00Z")
    plan = planner.plan([old, young], replace(NODE, incumbents=frozenset({ref(young)})))
    assert states(plan) == {
        "young": ("Applied", "Programmed"),
        "old": ("Conflicted", "PortConflict"),
    }
    assert "already applied on this node" in message(plan, "old")


def test_two_incumbents_fall_back_to_age() -> None:
    a, b = net("a", "10.0.0.0/24", "1"), net("b", "10.0.0.0/16", "2")
    plan = planner.plan([b, a], replace(NodeFacts("n"), incumbents=frozenset({ref(a), ref(b)})))
    assert states(plan) == {"a": ("Applied", "Programmed"), "b": ("Conflicted", "SubnetOverlap")}


def test_first_seen_stands_in_for_creation_time() -> None:
    """A resource first seen earlier is older, whatever its name; times persist."""
    old = net("zz", "10.0.0.0/24")
    resources, seen = firstseen.stamp([old], {}, "2026-01-01T00:00:00.000000Z")
    assert seen == {"BridgeNetwork//zz": "2026-01-01T00:00:00.000000Z"}
    resources, seen = firstseen.stamp(
        [old, net("aa", "10.0.0.0/16")], seen, "2026-01-02T00:00:00.000000Z"
    )
    plan = planner.plan(resources, NodeFacts("n"))
    assert states(plan) == {"zz": ("Applied", "Programmed"), "aa": ("Conflicted", "SubnetOverlap")}
    _, seen = firstseen.stamp([net("aa", "10.0.0.0/16")], seen, "2026-01-03T00:00:00.000000Z")
    assert seen == {"BridgeNetwork//aa": "2026-01-02T00:00:00.000000Z"}  # zz is gone


def test_kubernetes_creation_times_are_kept() -> None:
    resources, seen = firstseen.stamp(
        [net("a", "10.0.0.0/24", "2026-01-01T00:00:00Z")], {}, "2027-01-01T00:00:00.000000Z"
    )
    assert seen == {} and resources[0].meta.created == "2026-01-01T00:00:00Z"  # type: ignore[union-attr]


def test_subnet_overlapping_a_node_network_is_applied_with_a_warning() -> None:
    import ipaddress

    facts = replace(
        NodeFacts("n"),
        networks=frozenset(
            {ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("fd00:c::/64")}
        ),
    )
    plan = planner.plan(
        [
            net("ov", "192.0.0.0/16", gateway="192.0.3.1"),
            net("v6", "10.1.0.0/24", subnet6="fd00:c::/48"),
            net("clear", "10.2.0.0/24"),
        ],
        facts,
    )
    assert states(plan) == {
        "ov": ("Applied", "SubnetOverlapsNode"),
        "v6": ("Applied", "SubnetOverlapsNode"),
        "clear": ("Applied", "Programmed"),
    }
    assert "overlaps 192.0.2.0/24" in message(plan, "ov")
    assert "overlaps fd00:c::/64" in message(plan, "v6")
    assert len(plan.bridges) == 3
