"""Incremental planning and rendering (pure): always what the full planner and renderer give.

Property (hypothesis): over random edit sequences (publications added, removed, moved to other
ports, ranges, host IPs (0.0.0.0 and :: included), protocols, dual-stack targets,
allowedSources; networks with interContainer on and off and node facts changing now and
then: forwarding, incumbents, local addresses a hostIP names, interfaces that are not ours;
invalid documents), after every edit the incremental plan equals `planner.plan` and
the patched tables equal `ruleset.render` (and their kept digest `ruleset.digest`), and a
partial plan's delta names every resource whose outcome moved and says when sockets did. The
same with the objects that moved handed over by a first-seen Stamper (as the agent does),
including after steps that planner missed (a reconcile that failed after stamping).
Scenarios: one changed publication among many replans only its port group; incumbency, an
address and a foreign interface replan only what names them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core import firstseen, planner, ruleset, specs
from bridgeport.core.incremental import IncrementalPlanner, IncrementalRenderer
from bridgeport.core.plan import NodeFacts
from tests.builders import API

NODE_IP = "192.0.2.1"
FACTS = NodeFacts("n", {"zone": "a"}, frozenset({specs.ipaddress.ip_address(NODE_IP)}))


def pub_doc(
    name: str,
    port: int,
    span: int,
    proto: str,
    host_ip: str | None,
    target: int,
    created: int,
    loopback: str,
    zone: str | None,
    dual: bool = False,
    sources: bool = False,
    assign: str = "",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "protocol": proto,
        "hostPort": port,
        "loopback": loopback,
        "target": {"address": f"10.9.0.{target}", "port": 80},
    }
    if sources:
        spec["allowedSources"] = ["198.51.100.0/24", f"203.0.113.{target}/32"]
    if dual:
        spec["target"]["address6"] = f"fd00:9::{target}"
    if span:
        spec["hostPortEnd"] = port + span
    if host_ip:
        spec["hostIP"] = host_ip
    if zone:
        spec["nodeSelector"] = {"matchLabels": {"zone": zone}}
    if assign:  # the node assigns the ports: among the fixed ones, or from the ephemeral range
        del spec["hostPort"]
        spec.pop("hostPortEnd", None)
        spec["assignFrom"] = {
            "count": span + 1,
            **({"start": 8000, "end": 8012} if assign == "range" else {}),
        }
    return {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"u-{name}",
            "creationTimestamp": f"2026-01-01T00:00:{created:02d}Z",
        },
        "spec": spec,
    }


def net_doc(
    subnet: str, icc: bool = True, name: str = "n1", subnet6: str = "fd00:9::/64"
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "BridgeNetwork",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "subnet6": subnet6, "interContainer": icc},
    }


def pub_strategy(assigning: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Publications; with `assigning`, some of them have their ports assigned by the node
    (every plan then compares all publications: the incremental planner's fast path, which
    compares only the objects that went and came, runs only in examples without them)."""
    return st.builds(
        pub_doc,
        name=st.sampled_from([f"p{i}" for i in range(12)]),
        port=st.integers(8000, 8012),
        span=st.sampled_from([0, 0, 0, 2]),
        proto=st.sampled_from(["TCP", "UDP"]),
        host_ip=st.sampled_from([None, NODE_IP, "192.0.2.9", "0.0.0.0", "::"]),
        target=st.integers(2, 5),
        created=st.integers(0, 5),
        loopback=st.sampled_from(["Never", "Auto"]),
        zone=st.sampled_from([None, "a", "b"]),
        dual=st.booleans(),
        sources=st.booleans(),
        assign=st.sampled_from(["", "", "", "range", "ephemeral"] if assigning else [""]),
    )


def edit_strategy(pubs: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(st.just("put"), pubs),
        st.tuples(
            st.just("drop"),
            st.sampled_from([f"p{i}{dup}" for i in range(12) for dup in ("", "", "~dup")]),
        ),
        st.tuples(
            st.just("net"),
            st.sampled_from([("10.9.0.0/24", True), ("10.8.0.0/24", True), ("10.9.0.0/24", False)]),
        ),
        st.tuples(st.just("facts"), st.sampled_from([True, False])),
        st.tuples(st.just("invalid"), st.sampled_from(["p3", "bad"])),
        st.tuples(st.just("dup"), pubs),  # a second document of the same publication
        # A second network: none, one whose subnet n1's overlaps, or one beside it.
        st.tuples(st.just("net2"), st.sampled_from([None, "10.9.0.0/24", "10.7.0.0/24"])),
        # Resources Applied here now (incumbents): they keep their claims against older ones
        # (~n1, ~n2: the networks, which conflict when their subnets overlap).
        st.tuples(
            st.just("incumbents"),
            st.sets(st.sampled_from([*(f"p{i}" for i in range(12)), "~n1", "~n2"])),
        ),
        # A hostIP some publications name becomes local or stops being local.
        st.tuples(st.just("address"), st.sampled_from([NODE_IP, "192.0.2.9"])),
        # An interface that is not ours comes or goes: a container's veth, or the network's
        # name.
        st.tuples(st.just("foreign"), st.sampled_from(["veth1", "bridge"])),
    )


def scenario(assigning: bool) -> st.SearchStrategy[tuple[list[Any], list[Any]]]:
    """Initial publications and the edits that follow."""
    pubs = pub_strategy(assigning)
    return st.tuples(
        st.lists(pubs, max_size=10), st.lists(edit_strategy(pubs), min_size=1, max_size=25)
    )


@settings(max_examples=150, deadline=None)
@given(st.booleans().flatmap(scenario), st.sets(st.integers(0, 25), max_size=4))
def test_incremental_equals_full(
    edited: tuple[list[dict[str, Any]], list[Any]], missed: set[int]
) -> None:
    initial, steps = edited
    docs: dict[str, dict[str, Any]] = {d["metadata"]["name"]: d for d in initial}
    parsed: dict[str, Any] = {}  # unchanged documents keep their parsed object, as sources do
    net = net_doc("10.9.0.0/24")
    net2: dict[str, Any] | None = None
    facts = FACTS
    inc, rend = IncrementalPlanner(), IncrementalRenderer()
    stamper, told = firstseen.Stamper({}), IncrementalPlanner()  # the network has no time
    for step, (kind, arg) in enumerate([("start", None), *steps]):
        if kind == "put":
            docs[arg["metadata"]["name"]] = arg
            parsed.pop(arg["metadata"]["name"], None)
        elif kind == "drop":
            docs.pop(arg, None)
        elif kind == "net":
            net = net_doc(*arg)
        elif kind == "net2":
            net2 = None if arg is None else net_doc(arg, name="n2", subnet6="fd00:7::/64")
        elif kind == "facts":
            facts = NodeFacts(
                "n",
                {"zone": "a"},
                FACTS.addresses,
                ipv4_forwarding=arg,
                incumbents=facts.incumbents,
            )
        elif kind == "incumbents":
            facts = replace(
                facts,
                incumbents=frozenset(
                    specs.ResourceRef("BridgeNetwork", "", name[1:])
                    if name.startswith("~")
                    else specs.ResourceRef("PortPublication", "ns", name)
                    for name in arg
                ),
            )
        elif kind == "address":
            facts = replace(facts, addresses=facts.addresses ^ {specs.ipaddress.ip_address(arg)})
        elif kind == "foreign":
            name = specs.parse(net).bridge if arg == "bridge" else arg  # type: ignore[union-attr]
            facts = replace(facts, foreign_interfaces=facts.foreign_interfaces ^ {name})
        elif kind == "dup":
            docs[arg["metadata"]["name"] + "~dup"] = arg
            parsed.pop(arg["metadata"]["name"] + "~dup", None)
        elif kind == "invalid":
            docs[arg] = {
                "apiVersion": API,
                "kind": "PortPublication",
                "metadata": {"name": arg, "namespace": "ns"},
                "spec": {"hostPort": 0},
            }
            parsed.pop(arg, None)
        for key, doc in (("~net", net), ("~net2", net2)):  # a changed network: a new object
            if doc is not None and parsed.get(key, (None,))[0] is not doc:
                parsed[key] = (doc, specs.parse(doc))
        resources = [parsed["~net"][1], *([parsed["~net2"][1]] if net2 is not None else [])]
        for name, doc in sorted(docs.items()):
            if name not in parsed:
                parsed[name] = specs.parse(doc)
            resources.append(parsed[name])
        full = planner.plan(resources, facts)
        got = inc.plan(resources, facts)
        assert got == full, kind
        stamped = stamper.stamp(resources, f"2026-01-01T00:00:{step:02d}.000000Z")
        if step not in missed:
            assert told.plan(stamped, facts, stamper.moved) == planner.plan(stamped, facts), kind
        tables = ruleset.render(full)
        assert rend.render(got, inc.delta) == tables, kind
        assert rend.digest() == ruleset.digest(tables), kind
        delta = inc.delta
        if delta is not None:  # what the agent settles and syncs from the delta alone
            before = delta.before
            moved = {o.ref for o in set(before.outcomes) ^ set(got.outcomes)}
            assert moved <= delta.refs, kind
            assert all(inc.outcome(o.ref) == o for o in got.outcomes)
            assert delta.sockets_changed or (before.proxies, before.claims) == (
                got.proxies,
                got.claims,
            ), kind
            # The proxy manager hears only these: before's sockets with them applied are
            # the plan's.
            sockets = delta.sockets()
            for old, removed, added, new in (
                (before.proxies, sockets.proxies_removed, sockets.proxies_added, got.proxies),
                (before.claims, sockets.claims_removed, sockets.claims_added, got.claims),
            ):
                assert Counter(removed) <= Counter(old), kind
                assert Counter(old) - Counter(removed) + Counter(added) == Counter(new), kind


def test_one_change_replans_its_group_only() -> None:
    docs = [pub_doc(f"p{i}", 10000 + i, 0, "TCP", None, 2, 0, "Never", None) for i in range(300)]
    resources = [specs.parse(d) for d in docs]
    inc = IncrementalPlanner()
    inc.plan(resources, FACTS)
    assert inc.delta is None  # the first plan is a full one
    moved = pub_doc("p7", 20000, 0, "TCP", None, 3, 0, "Never", None)
    resources[7] = specs.parse(moved)
    plan = inc.plan(resources, FACTS)
    assert plan == planner.plan(resources, FACTS)
    assert inc.delta is not None
    assert [d.port for d in inc.delta.removed] == [10007]
    assert [d.port for d in inc.delta.added] == [20000]


def test_incumbency_replans_only_contested_groups() -> None:
    """After a load, every publication turns incumbent at once: only those sharing a port
    group can change outcome, and only their groups are replanned."""
    older = pub_doc("older", 8000, 0, "TCP", None, 2, 0, "Never", None)
    newer = pub_doc("newer", 8000, 0, "TCP", None, 3, 5, "Never", None)
    alone = [pub_doc(f"a{i}", 9000 + i, 0, "TCP", None, 4, 0, "Never", None) for i in range(50)]
    resources = [specs.parse(d) for d in (older, newer, *alone)]
    ref = {r.meta.ref.name: r.meta.ref for r in resources}
    inc = IncrementalPlanner()
    facts = replace(FACTS, incumbents=frozenset({ref["newer"]}))  # the newer one keeps 8000
    assert inc.plan(resources, facts) == planner.plan(resources, facts)
    for incumbents in ({ref["older"], *(ref[f"a{i}"] for i in range(50))}, {ref["newer"]}):
        facts = replace(FACTS, incumbents=frozenset(incumbents))
        plan = inc.plan(resources, facts)
        assert plan == planner.plan(resources, facts)  # the winner of 8000 flipped
        assert inc.delta is not None
        assert inc.delta.refs == {ref["older"], ref["newer"]}  # not the 50 alone


def test_a_network_turning_incumbent_replans_nothing_else() -> None:
    """After a start, the network turns incumbent with the publications: its outcome holds,
    so the next change is a partial plan (it was a full one); a network whose incumbency
    decides a conflict between networks is a full plan."""
    docs = [pub_doc(f"p{i}", 10000 + i, 0, "TCP", None, 2, 0, "Never", None) for i in range(50)]
    n1, n2 = (specs.parse(net_doc("10.9.0.0/24", name=n)) for n in ("n1", "n2"))
    resources = [n1, *(specs.parse(d) for d in docs)]
    inc = IncrementalPlanner()
    applied = inc.plan(resources, FACTS).outcomes
    facts = replace(FACTS, incumbents=frozenset(o.ref for o in applied))
    assert inc.plan(resources, facts) == planner.plan(resources, facts)
    assert inc.delta is not None and not inc.delta.refs
    resources.append(n2)  # it conflicts with n1 (same subnet) and loses: n1 is older by name
    assert inc.plan(resources, facts) == planner.plan(resources, facts)
    facts = replace(facts, incumbents=frozenset({n2.meta.ref}))  # n2 now wins the subnet
    assert inc.plan(resources, facts) == planner.plan(resources, facts)
    assert inc.delta is None


def test_addresses_and_foreign_interfaces_replan_only_what_names_them() -> None:
    """A container's veth (an interface that is not ours) or a new local address must not
    replan 10,000 publications: only those naming it, or all when a network names it."""
    bound = pub_doc("bound", 7000, 0, "TCP", "192.0.2.9", 2, 0, "Never", None)  # not local yet
    wild = [pub_doc(f"w{i}", 9000 + i, 0, "TCP", None, 3, 0, "Never", None) for i in range(50)]
    net = specs.parse(net_doc("10.9.0.0/24"))
    resources = [net, *(specs.parse(d) for d in (bound, *wild))]
    inc = IncrementalPlanner()
    facts = FACTS
    assert inc.plan(resources, facts) == planner.plan(resources, facts)
    steps: list[tuple[str, Any, set[str] | None]] = [
        ("foreign_interfaces", {"veth1"}, set()),
        ("addresses", {specs.ipaddress.ip_address("192.0.2.9")}, {"bound"}),
        ("foreign_interfaces", {net.bridge}, None),  # type: ignore[union-attr]  # a full plan
        ("addresses", {specs.ipaddress.ip_address("192.0.2.9")}, {"bound"}),
    ]
    for field, toggle, refs in steps:
        facts = replace(facts, **{field: getattr(facts, field) ^ toggle})
        assert inc.plan(resources, facts) == planner.plan(resources, facts), field
        if refs is None:
            assert inc.delta is None
        else:
            assert inc.delta is not None
            assert {r.name for r in inc.delta.refs} == refs, field
