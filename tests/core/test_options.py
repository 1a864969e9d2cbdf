"""Docker 28/29's bridge-driver options (issue 13), planned and rendered.

Scenarios:
- hostBinding: publications without hostIP take the network's address; their own hostIP wins;
  127.0.0.1 leaves only the proxy; a binding of the wrong family is Invalid; claims follow it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from bridgeport.core import planner, ruleset
from bridgeport.core.plan import NodePlan
from tests.builders import API
from tests.core.parsed import NODE, message, net, pub, states


def nft(plan: NodePlan, family: int = 4) -> str:
    return ruleset.render(plan)[0 if family == 4 else 1].text()


def test_host_binding_is_the_default_host_ip() -> None:
    """No hostIP: the network's hostBinding; an own hostIP wins; claims use the bound IP."""
    plan = planner.plan(
        [
            net("n", "10.0.0.0/24", hostBinding="192.0.2.11"),
            pub("bound", 80),
            pub("own", 81, hostIP="192.0.2.1"),
            pub("other-ip", 80, hostIP="192.0.2.1"),  # no conflict with 192.0.2.11:80
        ],
        NODE,
    )
    assert states(plan) == {
        "n": ("Applied", "Programmed"),
        "bound": ("Applied", "Programmed"),
        "own": ("Applied", "Programmed"),
        "other-ip": ("Applied", "Programmed"),
    }
    hosts = {d.owner.name: str(d.host_ip) for d in plan.dnats}
    assert hosts == {"bound": "192.0.2.11", "own": "192.0.2.1", "other-ip": "192.0.2.1"}
    assert "192.0.2.11:80/TCP" in message(plan, "bound")
    assert "BridgeNetwork n's spec.hostBinding" in message(plan, "bound")
    assert not plan.proxies  # a specific, non-loopback address: kernel only, like a hostIP
    assert "192.0.2.11 . tcp . 80" in nft(plan)


def test_host_binding_loopback_is_local_only() -> None:
    """127.0.0.1: no DNAT at all, the proxy serves 127.0.0.1 only."""
    plan = planner.plan([net("n", "10.0.0.0/24", hostBinding="127.0.0.1"), pub("p", 80)], NODE)
    assert states(plan)["p"] == ("Applied", "Programmed")
    assert not plan.dnats
    assert [(str(p.listen), p.port) for p in plan.proxies] == [("127.0.0.1", 80)]


def test_host_binding_not_local_and_wrong_family() -> None:
    """A binding the node lacks leaves the publication Inactive; a family that cannot be NATed
    to the target is Invalid and names the field; other networks are unaffected."""
    plan = planner.plan(
        [
            net("n", "10.0.0.0/24", hostBinding="203.0.113.9"),
            net("six", "10.0.1.0/24", hostBinding="2001:db8::1"),
            pub("away", 80),
            pub("mixed", 81, target={"address": "10.0.1.2", "port": 80}),
            pub("elsewhere", 82, target={"address": "10.9.0.2", "port": 80}),
        ],
        NODE,
    )
    assert states(plan)["away"] == ("Inactive", "HostIPNotLocal")
    assert "hostBinding" in message(plan, "away")
    assert states(plan)["mixed"] == ("Invalid", "HostBindingFamilyMismatch")
    assert "spec.hostIP" in message(plan, "mixed")
    assert states(plan)["elsewhere"] == ("Applied", "Programmed")
    assert [d.host_ip for d in plan.dnats] == [None]


def test_host_binding_parses_and_rejects() -> None:
    from bridgeport.core import specs

    bound = net("n", "10.0.0.0/24", hostBinding="::1")
    assert isinstance(bound, specs.BridgeNetwork)
    assert bound.host_binding == ipaddress.ip_address("::1")
    bad = net("n", "10.0.0.0/24", hostBinding="224.0.0.1")
    assert isinstance(bad, specs.InvalidResource)
    assert "spec.hostBinding" in bad.message


def test_host_binding_family_wildcard() -> None:
    """0.0.0.0 (Docker's default host_binding_ipv4): a dual-stack publication on the network
    is published on every IPv4 address only."""
    plan = planner.plan(
        [
            net("n", "10.0.0.0/24", subnet6="fd00::/64", hostBinding="0.0.0.0"),
            pub("dual", 80, target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80}),
        ],
        NODE,
    )
    assert states(plan)["dual"] == ("Applied", "Programmed")
    assert {d.family for d in plan.dnats} == {4}


def test_gateway_modes_per_family() -> None:
    """routed: no DNAT, no proxy, no claim (hostPort ignored), no masquerade; the container
    port opens instead. nat-unprotected keeps NAT. isolated: no address of that family."""
    plan = planner.plan(
        [
            net("r", "10.0.0.0/24", subnet6="fd00::/64", gatewayMode="routed"),
            net("u", "10.0.1.0/24", gatewayMode="nat-unprotected"),
            net("i", "10.0.2.0/24", subnet6="fd00:2::/64", internal=True, gatewayMode6="isolated"),
            pub("routed", 80, hostIP="203.0.113.1", hostPortEnd=81),  # not local: ignored
            pub("same-port", 80, target={"address": "10.0.1.2", "port": 80}),
            pub("v6", 82, target={"address": "fd00::2", "port": 80}),
        ],
        NODE,
    )
    assert {k: v[0] for k, v in states(plan).items()} == dict.fromkeys(
        ("r", "u", "i", "routed", "same-port", "v6"), "Applied"
    )
    assert "hostPort and spec.hostIP are ignored" in message(plan, "routed")
    assert [(str(r.target), r.port, r.port_end) for r in plan.routed] == [("10.0.0.2", 80, 81)]
    assert {d.owner.name for d in plan.dnats} == {"same-port", "v6"}  # IPv6 side is nat
    assert {p.owner.name for p in plan.proxies} == {"same-port", "v6"}
    by_name = {b.network: b for b in plan.bridges}
    assert [str(a) for a in by_name["i"].addresses] == ["10.0.2.1/24"]
    assert "gatewayMode6 isolated" in message(plan, "i")
    v4, v6 = nft(plan, 4), nft(plan, 6)
    assert "10.0.0.2 . tcp . 80-81" in v4 and "masq_bp-r" not in v4 and "masq_bp-r" in v6
    assert "hairpin_bp-r" not in v4
    assert "iifname != @bridges ip daddr . meta l4proto . th dport @routed accept" in v4
    assert "iifname != @bridges accept" in v4 and "iifname != @bridges accept" not in v6


def test_isolated_needs_internal() -> None:
    from bridgeport.core import specs

    bad = net("n", "10.0.0.0/24", gatewayMode="isolated")
    assert isinstance(bad, specs.InvalidResource)
    assert "spec.gatewayMode: gatewayMode isolated requires internal: true" in bad.message
    bad6 = net("n", "10.0.0.0/24", gatewayMode6="isolated")
    assert isinstance(bad6, specs.InvalidResource) and "spec.gatewayMode6" in bad6.message
    assert isinstance(net("n", "10.0.0.0/24", gatewayMode="bogus"), specs.InvalidResource)


def test_dual_stack_target_routed_in_one_family() -> None:
    """gatewayMode nat, gatewayMode6 routed: a dual-stack target is NATed for IPv4 and its
    IPv6 container port is opened instead."""
    plan = planner.plan(
        [
            net("n", "10.0.0.0/24", subnet6="fd00::/64", gatewayMode6="routed"),
            pub("dual", 80, target={"address": "10.0.0.2", "address6": "fd00::2", "port": 8080}),
        ],
        NODE,
    )
    assert states(plan)["dual"] == ("Applied", "Programmed")
    assert [(d.family, str(d.target)) for d in plan.dnats] == [(4, "10.0.0.2")]
    assert [(r.family, str(r.target), r.port) for r in plan.routed] == [(6, "fd00::2", 8080)]


def test_trusted_interfaces() -> None:
    """Traffic from a trusted interface enters the bridge on any port, in every family;
    names are checked, de-duplicated and sorted; internal networks refuse the list."""
    from bridgeport.core import specs

    plan = planner.plan(
        [net("n", "10.0.0.0/24", subnet6="fd00::/64", trustedInterfaces=["wg0", "eth1"])], NODE
    )
    for family in (4, 6):
        assert 'iifname { "eth1", "wg0" } accept\n\t\tcounter drop' in nft(plan, family)
    assert isinstance(
        net("n", "10.0.0.0/24", trustedInterfaces=["eth1", "eth1"]), specs.InvalidResource
    )
    bad = net("n", "10.0.0.0/24", trustedInterfaces=['eth0"; drop'])
    assert isinstance(bad, specs.InvalidResource)
    assert "spec.trustedInterfaces[0]" in bad.message
    internal = net("n", "10.0.0.0/24", internal=True, trustedInterfaces=["wg0"])
    assert isinstance(internal, specs.InvalidResource)
    assert "no effect on an internal network" in internal.message


def test_accept_mark() -> None:
    """The node's accept mark: one rule early in our forward chain, both families; parsing
    refuses what would match unmarked packets or cannot be a 32-bit mark."""
    import dataclasses

    import pytest

    from bridgeport.core.plan import Fwmark

    assert Fwmark.parse("0x10000/0x10000") == Fwmark(0x10000, 0x10000)
    assert Fwmark.parse("7") == Fwmark(7, 0xFFFFFFFF)
    assert str(Fwmark.parse("65536/0xff0000")) == "0x10000/0xff0000"
    for bad in ("0", "0/0xff", "0x100/0xff", "mark", "1/0", "0x1ffffffff", "1/2/3", ""):
        with pytest.raises(ValueError):
            Fwmark.parse(bad)
    facts = dataclasses.replace(NODE, accept_mark=Fwmark(0x10000, 0x10000))
    plan = planner.plan([net("n", "10.0.0.0/24")], facts)
    for family in (4, 6):
        assert (
            "ct state established,related accept\n"
            "\t\tmeta mark & 0x00010000 == 0x00010000 accept\n"
            "\t\tiifname vmap @fwd_in"
        ) in nft(plan, family)
    assert "meta mark" not in nft(planner.plan([net("n", "10.0.0.0/24")], NODE))


def test_plan_cli_accept_fwmark() -> None:
    """`bridgeport plan --accept-fwmark` shows the rule; a bad mark is a usage error."""
    from tests.cli.test_cli import plan as run_plan

    out = run_plan("-f", "examples/network.yaml", "--accept-fwmark", "0x10000/0x10000")
    assert out.returncode == 0, out.stderr
    assert "meta mark & 0x00010000 == 0x00010000 accept" in out.stdout
    bad = run_plan("-f", "examples/network.yaml", "--accept-fwmark", "0")
    assert bad.returncode == 2 and "must be non-zero" in bad.stderr


def test_readme_override_example_is_the_tested_one() -> None:
    """The README's worked example is the table tests/agent/test_options.py loads."""
    from pathlib import Path

    from tests.agent.test_options import ADMIN_TABLE

    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    assert ADMIN_TABLE.strip() in readme


def test_egress_address() -> None:
    """SNAT to the egress address where the node has it; masquerade (and a status note)
    where it does not; refused where nothing is translated."""
    from bridgeport.core import specs

    node = NODE  # has 192.0.2.1 and 192.0.2.11, no IPv6
    plan = planner.plan(
        [
            net(
                "here",
                "10.0.0.0/24",
                subnet6="fd00::/64",
                egressAddress="192.0.2.11",
                egressAddress6="2001:db8::5",
            ),
            net("away", "10.0.1.0/24", egressAddress="203.0.113.7"),
        ],
        node,
    )
    v4, v6 = nft(plan, 4), nft(plan, 6)
    assert 'ip saddr 10.0.0.0/24 oifname != "bp-here" snat ip to 192.0.2.11' in v4
    assert 'ip6 saddr fd00::/64 oifname != "bp-here" masquerade' in v6
    assert 'ip saddr 10.0.1.0/24 oifname != "bp-away" masquerade' in v4
    assert "egress SNAT to 192.0.2.11" in message(plan, "here")
    assert "egressAddress6 2001:db8::5 is inactive" in message(plan, "here")
    assert "egressAddress 203.0.113.7 is inactive: not an address of node" in message(plan, "away")
    for spec, field in (
        ({"egressAddress": "2001:db8::5"}, "spec.egressAddress"),
        ({"egressAddress": "127.0.0.1"}, "spec.egressAddress"),
        ({"egressAddress6": "2001:db8::5"}, "spec.egressAddress6"),
        ({"egressAddress": "192.0.2.1", "masquerade": False}, "spec.egressAddress"),
        ({"egressAddress": "192.0.2.1", "gatewayMode": "routed"}, "spec.egressAddress"),
    ):
        bad = net("n", "10.0.0.0/24", **spec)
        assert isinstance(bad, specs.InvalidResource), spec
        assert field in bad.message, spec


def test_loopback_kernel() -> None:
    """127.0.0.1 by DNAT in the output path (no proxy there), ::1 on the proxy, route_localnet
    on the target's bridge only; a fallback to the proxy says why."""
    import dataclasses

    facts = dataclasses.replace(NODE, route_localnet=True)
    resources = [
        net("n", "10.0.0.0/24"),
        net("m", "10.0.1.0/24"),
        pub("k", 8080, loopback="Kernel"),
        pub("six", 8081, loopback="Kernel", target={"address": "fd00::2", "port": 80}),
    ]
    plan = planner.plan(resources, facts)
    lo = [d for d in plan.dnats if d.loopback]
    assert [(str(d.host_ip), d.port, str(d.target)) for d in lo] == [
        ("127.0.0.1", 8080, "10.0.0.2")
    ]
    # An IPv4 target publishes no IPv6 side; an IPv6 one leaves loopback to the proxy on ::.
    assert {(str(p.listen), p.port) for p in plan.proxies} == {("::", 8081)}
    assert {b.network: b.route_localnet for b in plan.bridges} == {"n": True, "m": False}
    assert "127.0.0.1 by kernel DNAT" in message(plan, "k")
    # The wildcard DNAT's claim on 0.0.0.0 covers 127.0.0.1: no second socket of ours there.
    claimed = {(str(c.listen), c.port) for c in plan.claims}
    assert ("0.0.0.0", 8080) in claimed and ("127.0.0.1", 8080) not in claimed
    only_lo = planner.plan(
        [net("n", "10.0.0.0/24"), pub("lo", 8090, loopback="Kernel", hostIP="127.0.0.1")], facts
    )
    assert {(str(c.listen), c.port) for c in only_lo.claims} == {("127.0.0.1", 8090)}
    assert "::1" not in message(plan, "k")
    assert "the kernel cannot DNAT ::1 or to IPv6" in message(plan, "six")
    dual = planner.plan(
        [
            net("n", "10.0.0.0/24", subnet6="fd00::/64"),
            pub(
                "d",
                8080,
                loopback="Kernel",
                target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80},
            ),
        ],
        facts,
    )
    assert "::1 stays on the proxy (the kernel cannot DNAT ::1)" in message(dual, "d")
    assert {(str(p.listen), p.port) for p in dual.proxies} == {("::", 8080)}
    v4 = nft(plan)
    assert "127.0.0.1 . tcp . 8080" in v4 and "ip daddr 127.0.0.0/8 jump publish_lo" in v4
    assert "ip daddr 127.0.0.0/8 iifname @localnet counter drop" in v4
    assert 'set localnet {\n\t\ttype ifname;\n\t\telements = {\n\t\t\t"bp-n",\n' in v4
    assert "publish_lo" not in nft(plan, 6)
    # The agent may not set route_localnet: 127.0.0.1 stays on the proxy, and status says why.
    plain = planner.plan(resources, NODE)
    assert not [d for d in plain.dnats if d.loopback]
    assert any(p.port == 8080 and p.listen.version == 4 for p in plain.proxies)
    assert "may not set route_localnet" in message(plain, "k")
    assert "publish_lo" not in nft(plain)  # nothing of it without a kernel loopback DNAT


def test_plan_json_lists_routed_ports(tmp_path: Path) -> None:
    """`plan --format json` lists a routed network's open container ports."""
    import json

    import yaml

    from tests.cli.test_cli import plan as run_plan

    docs = [
        {
            "apiVersion": API,
            "kind": "BridgeNetwork",
            "metadata": {"name": "r"},
            "spec": {"subnet": "10.0.0.0/24", "gatewayMode": "routed"},
        },
        {
            "apiVersion": API,
            "kind": "PortPublication",
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"hostPort": 80, "target": {"address": "10.0.0.2", "port": 8080}},
        },
    ]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump_all(docs))
    out = run_plan("-f", str(tmp_path), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["routed"] == [
        {"target": "10.0.0.2", "protocol": "TCP", "port": 8080, "portEnd": 8080, "owner": "a/p"}
    ]
