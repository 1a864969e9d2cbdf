"""Port claims and reserved ports in the plan (pure).

Scenarios: every address:port a DNAT captures is held, by a proxy listener where one serves
it, else by a bare claim: a specific host IP, a wildcard (IPv4 and IPv6 targets), Never,
ranges, SCTP, --no-proxy; a loopback-only publication needs no claim. Reserved ports make a
publication Conflicted/ReservedPort before any conflict between publications; a failed claim
makes it Failed/ClaimFailed without DNAT. Property: for any set of publications, every
captured address:port is held exactly once.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core import claims, planner, specs
from bridgeport.core.plan import NodeFacts, NodePlan
from tests.builders import publication

NODE = NodeFacts(
    "node-1", {}, frozenset(ipaddress.ip_address(a) for a in ("192.0.2.1", "192.0.2.11", "fd00::1"))
)


def pub(name: str, port: int, created: str = "", target: str = "10.0.0.2", **spec: Any) -> Any:
    return specs.parse(publication(name, port, target, 80, created=created, **spec))


def held(plan: NodePlan) -> dict[tuple[str, int, str], str]:
    """(address, port, protocol) -> how it is held: 'proxy' or 'claim'."""
    out = {(str(c.listen), c.port, c.protocol.value): "claim" for c in plan.claims}
    out |= {(str(p.listen), p.port, p.protocol.value): "proxy" for p in plan.proxies if p.holds}
    return out


def captured(plan: NodePlan) -> set[tuple[str, int, str]]:
    return {
        (str(d.host_ip or claims.WILDCARD[d.family]), port, d.protocol.value)
        for d in plan.dnats
        for port in range(d.port, d.port_end + 1)
    }


def test_every_captured_address_is_held() -> None:
    plan = planner.plan(
        [
            pub("auto", 80),
            pub("never", 81, loopback="Never"),
            pub("specific", 82, hostIP="192.0.2.11"),
            pub("always", 83, hostIP="192.0.2.1", loopback="Always"),
            pub("range", 9000, hostPortEnd=9002, protocol="UDP", loopback="Never"),
            pub("sctp", 84, protocol="SCTP"),
            pub("six", 85, target="fd00:9::2"),
            pub("lo", 86, hostIP="127.0.0.1"),
        ],
        NODE,
    )
    assert held(plan) == {
        ("0.0.0.0", 80, "TCP"): "proxy",  # Auto's loopback listener, widened
        ("0.0.0.0", 81, "TCP"): "claim",
        ("192.0.2.11", 82, "TCP"): "claim",
        ("192.0.2.1", 83, "TCP"): "proxy",
        ("0.0.0.0", 9000, "UDP"): "claim",
        ("0.0.0.0", 9001, "UDP"): "claim",
        ("0.0.0.0", 9002, "UDP"): "claim",
        ("0.0.0.0", 84, "SCTP"): "claim",
        ("::", 85, "TCP"): "proxy",
    }
    assert captured(plan) == set(held(plan))
    # A loopback listener that no DNAT needs stays what it was.
    assert {(str(p.listen), p.port) for p in plan.proxies if not p.holds} == {("127.0.0.1", 86)}


def test_no_proxy_claims_everything_with_bare_sockets() -> None:
    from dataclasses import replace

    plan = planner.plan(
        [pub("auto", 80), pub("always", 81, loopback="Always")], replace(NODE, userland_proxy=False)
    )
    assert not plan.proxies
    assert held(plan) == {("0.0.0.0", 80, "TCP"): "claim", ("0.0.0.0", 81, "TCP"): "claim"}


def test_reserved_ports() -> None:
    from dataclasses import replace

    facts = replace(NODE, reserved_ports=frozenset({22, 2379, 2380, 10250}))
    plan = planner.plan(
        [
            pub("ssh", 22, created="2020"),
            pub("etcd", 2370, hostPortEnd=2390),
            pub("ok", 8080),
            pub("late", 22, created="2021"),
        ],
        facts,
    )
    out = {o.ref.name: (o.state.value, o.reason, o.message) for o in plan.outcomes}
    assert out["ssh"][:2] == ("Conflicted", "ReservedPort")
    assert "reserved port(s) 22 on node node-1" in out["ssh"][2]
    assert out["etcd"][:2] == ("Conflicted", "ReservedPort") and "2379, 2380" in out["etcd"][2]
    assert out["late"][:2] == ("Conflicted", "ReservedPort")  # not "conflicts with ssh"
    assert out["ok"][:2] == ("Applied", "Programmed")
    assert {d.owner.name for d in plan.dnats} == {"ok"}


def test_failed_claim_is_never_dnated() -> None:
    from dataclasses import replace

    p = pub("web", 80, hostIP="192.0.2.1")
    plan = planner.plan(
        [p],
        replace(
            NODE, claims_failed={p.meta.ref: "binding 192.0.2.1:80/TCP needs CAP_NET_BIND_SERVICE"}
        ),
    )
    assert [(o.state.value, o.reason) for o in plan.outcomes] == [("Failed", "ClaimFailed")]
    assert not plan.dnats and not plan.claims


_pubs = st.lists(
    st.tuples(
        st.sampled_from([80, 81, 9000]),
        st.integers(0, 3),
        st.sampled_from([None, "192.0.2.1", "192.0.2.11", "127.0.0.1"]),
        st.sampled_from(["Auto", "Always", "Never"]),
        st.sampled_from(["TCP", "UDP", "SCTP"]),
        st.sampled_from(["10.0.0.2", "fd00:9::2"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(_pubs)
def test_property_every_dnat_is_held_once(items: list[Any]) -> None:
    docs = []
    for i, (port, extra, host, loop, proto, target, _, _) in enumerate(items):
        spec: dict[str, Any] = {"loopback": loop, "protocol": proto}
        if extra:
            spec["hostPortEnd"] = port + extra
        if host and (target == "10.0.0.2" or host == "127.0.0.1"):
            spec["hostIP"] = host
        docs.append(pub(f"p{i}", port, created=f"{i:03}", target=target, **spec))
    from dataclasses import replace

    facts = replace(
        NODE,
        ipv4_forwarding=items[0][6] if items else True,
        userland_proxy=items[0][7] if items else True,
    )
    plan = planner.plan(docs, facts)
    keys = [c.key for c in plan.claims] + [p.key for p in plan.proxies]
    assert len(keys) == len(set(keys))  # no socket planned twice
    assert captured(plan) <= set(held(plan))
