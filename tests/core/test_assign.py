"""Assigned host ports (issue 13 item 6): the allocator, the planner's use of it, the report.

Allocator: reserved ports are skipped, ports processes listen on are not given to newcomers,
TCP/UDP/SCTP are counted apart, a full range gives None, a run of `count` ports is
consecutive, a previous assignment is kept while valid (even though our own socket now
listens there) and dropped when reserved, outside the range, avoided or taken by a fixed
port ahead of it. Properties: every port is in range, free and unique per protocol; a second
allocation fed the first one's ports (as our sockets) gives the same ports.
Planner: no hostPort means a port from the ephemeral range, one for both families; routed
networks, nodeSelector and hostIP leave a publication without one; NoFreePort; the incumbent
keeps its port against a new fixed publication; incremental = full. Agent: the port survives
a restart through the state file, and a port a host process took is replaced.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.adapters.facts import parse_port_list
from bridgeport.adapters.fake import FakeDataplane
from bridgeport.agent import Agent, AgentSettings
from bridgeport.core import assign, planner, report, specs
from bridgeport.core import status as status_mod
from bridgeport.core.assign import Fixed, Request
from bridgeport.core.incremental import IncrementalPlanner
from bridgeport.core.plan import NodeFacts, NodePlan
from bridgeport.core.specs import PORT_PUBLICATION, ResourceRef
from tests.agent.test_agent import HeldPorts, ListSource
from tests.builders import publication
from tests.core.parsed import NODE, net, pub


def ref(name: str) -> ResourceRef:
    return ResourceRef(PORT_PUBLICATION, "default", name)


def assigned(name: str, created: str = "", **spec: Any) -> Any:
    """A publication without hostPort (the node assigns it)."""
    doc = publication(name, 0, created=created, **spec)
    doc["spec"].pop("hostPort")
    return specs.parse(doc)


def outcome(plan: NodePlan, name: str) -> Any:
    return next(o for o in plan.outcomes if o.ref.name == name)


# -- the allocator ------------------------------------------------------------------------------


def test_reserved_and_listening_ports_are_skipped_per_protocol() -> None:
    first = assign.preferred(ref("a"), 1000, 1009, 1)
    busy = {(first - 1000 + i) % 10 + 1000 for i in range(3)}  # the start and the next two
    out = assign.allocate(
        [Request(ref("a"), "TCP", 1000, 1009), Request(ref("b"), "UDP", 1000, 1009)],
        reserved={min(busy)},
        in_use={"TCP": busy - {min(busy)}},
    )
    assert out[ref("a")] not in busy and 1000 <= (out[ref("a")] or 0) <= 1009
    # UDP: only the reserved port counts (TCP's listeners are TCP's)
    assert out[ref("b")] != min(busy)


def test_tcp_udp_and_sctp_are_separate() -> None:
    out = assign.allocate([Request(ref(p), p, 5000, 5000) for p in ("TCP", "UDP", "SCTP")])
    assert out == {ref("TCP"): 5000, ref("UDP"): 5000, ref("SCTP"): 5000}


def test_an_exhausted_range_gives_none_and_nothing_else_breaks() -> None:
    out = assign.allocate(
        [
            Fixed("TCP", 7000, 7000),
            Request(ref("a"), "TCP", 7000, 7001),
            Request(ref("b"), "TCP", 7000, 7001),
            Request(ref("c"), "TCP", 7000, 7001),
        ]
    )
    assert out == {ref("a"): 7001, ref("b"): None, ref("c"): None}


def test_a_count_takes_consecutive_ports() -> None:
    out = assign.allocate(
        [
            Fixed("TCP", 6002, 6002),
            Request(ref("a"), "TCP", 6000, 6099, 3),
            Request(ref("b"), "TCP", 6000, 6099, 5),
        ]
    )
    a, b = out[ref("a")], out[ref("b")]
    assert a is not None and b is not None
    taken = [*range(a, a + 3), *range(b, b + 5), 6002]
    assert len(set(taken)) == len(taken) and all(6000 <= p <= 6099 for p in taken)
    # one port short of a run: a request for more than the free run fails
    assert assign.allocate([Fixed("TCP", 6002, 6002), Request(ref("c"), "TCP", 6000, 6004, 3)]) == {
        ref("c"): None
    }


def test_previous_is_kept_while_valid() -> None:
    keep = Request(ref("a"), "TCP", 30000, 30100, previous=30050)
    # our own socket listens there now: that does not make it someone else's
    assert assign.allocate([keep], in_use={"TCP": {30050}}) == {ref("a"): 30050}
    for why, items, reserved in [
        ("reserved now", [keep], {30050}),
        ("outside the range", [replace(keep, start=30060)], set()),
        ("taken by a host process", [replace(keep, avoid=frozenset({30050}))], set()),
        ("a fixed port ahead of it", [Fixed("TCP", 30050, 30050), keep], set()),
        ("an earlier previous", [replace(keep, ref=ref("z")), keep], set()),
    ]:
        out = assign.allocate(items, reserved=reserved)
        assert out[ref("a")] not in (30050, None), why


def test_a_fixed_port_behind_a_previous_assignment_does_not_move_it() -> None:
    """Claim order: the incumbent keeps its port; the newcomer's conflict is the planner's."""
    out = assign.allocate(
        [Request(ref("a"), "TCP", 30000, 30100, previous=30050), Fixed("TCP", 30050, 30050)]
    )
    assert out == {ref("a"): 30050}


def test_new_assignments_avoid_every_fixed_port() -> None:
    first = assign.preferred(ref("a"), 40000, 40010, 1)
    out = assign.allocate([Request(ref("a"), "TCP", 40000, 40010), Fixed("TCP", first, first)])
    assert out[ref("a")] != first


def test_listening_ports_from_sock_diag_and_proc_agree() -> None:
    """A TCP listener and a bound UDP socket on loopback are seen by both readers; a TCP
    socket that only connected out is not a listener."""
    import socket

    from bridgeport.adapters import facts

    with (
        socket.socket() as tcp,
        socket.socket(type=socket.SOCK_DGRAM) as udp,
        socket.socket() as client,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        client.connect(tcp.getsockname())
        seen = facts.listening_ports()
        proc = facts._proc_ports(Path("/proc/self/net"))
        for got in (seen, proc):
            assert tcp.getsockname()[1] in got["TCP"] and udp.getsockname()[1] in got["UDP"]
            assert client.getsockname()[1] not in got["TCP"]


def test_kernel_port_list_syntax() -> None:
    assert parse_port_list("8080,9000-9002\n") == {8080, 9000, 9001, 9002}
    assert parse_port_list("") == set() and parse_port_list("x,1-2") == {1, 2}


REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["TCP", "UDP"]),
        st.integers(1, 3),
        st.integers(0, 40),
        st.integers(0, 40),
        st.none() | st.integers(100, 140),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    REQUESTS,
    st.sets(st.integers(100, 140), max_size=10),
    st.sets(st.integers(100, 140), max_size=10),
)
def test_allocations_are_free_unique_and_stable(
    raw: list[Any], reserved: set[int], listening: set[int]
) -> None:
    items: list[Request | Fixed] = []
    for i, (proto, count, a, b, previous, fixed) in enumerate(raw):
        lo, hi = 100 + min(a, b), 100 + max(a, b)
        if fixed:
            items.append(Fixed(proto, lo, min(hi, lo + count - 1)))
        else:
            items.append(Request(ref(f"p{i}"), proto, lo, hi, count, previous))
    out = assign.allocate(items, reserved, {"TCP": listening})
    taken: dict[str, set[int]] = {}
    for item in items:
        if isinstance(item, Request) and out[item.ref] is not None:
            first = out[item.ref]
            assert first is not None
            ports = set(range(first, first + item.count))
            assert item.start <= first and first + item.count - 1 <= item.end
            assert not ports & reserved
            assert not ports & taken.get(item.protocol, set()), "two requests share a port"
            if first != item.previous and item.protocol == "TCP":
                assert not ports & listening, "a newcomer got a port a process listens on"
            taken.setdefault(item.protocol, set()).update(ports)
    # Stable: the next reconcile remembers these, and our own sockets listen on them now.
    again = [replace(i, previous=out[i.ref]) if isinstance(i, Request) else i for i in items]
    ours = {
        p
        for i in items
        if isinstance(i, Request) and i.protocol == "TCP" and out[i.ref] is not None
        for p in range(out[i.ref] or 0, (out[i.ref] or 0) + i.count)
    }
    second = assign.allocate(again, reserved, {"TCP": listening | ours})
    assert {r: p for r, p in second.items() if out[r] is not None} == {
        r: p for r, p in out.items() if p is not None
    }


# -- the planner --------------------------------------------------------------------------------

EPHEMERAL = replace(NODE, port_range=(32768, 60999))


def test_no_host_port_gets_one_from_the_ephemeral_range_for_both_families() -> None:
    plan = planner.plan(
        [assigned("web", target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80})],
        EPHEMERAL,
    )
    o = outcome(plan, "web")
    assert o.state.value == "Applied" and o.assigned is not None
    first, last = o.assigned
    assert first == last and 32768 <= first <= 60999
    assert {(d.family, d.port) for d in plan.dnats} == {(4, first), (6, first)}
    assert f"{first}/TCP (assigned)" in o.message
    assert (
        planner.plan(
            [assigned("web", target={"address": "10.0.0.2", "address6": "fd00::2", "port": 80})],
            EPHEMERAL,
        )
        == plan
    )


def test_assign_from_a_range_with_a_count_maps_port_by_port() -> None:
    plan = planner.plan(
        [assigned("dns", protocol="UDP", assignFrom={"start": 8000, "end": 8009, "count": 3})], NODE
    )
    o = outcome(plan, "dns")
    assert o.assigned is not None and o.assigned[1] == o.assigned[0] + 2
    (d,) = plan.dnats
    assert (d.port, d.port_end, d.target_port) == (*o.assigned, 80)


def test_exhausted_range_is_conflicted_no_free_port() -> None:
    plan = planner.plan(
        [
            pub("fixed", 9000),
            assigned("a", assignFrom={"start": 9000, "end": 9001}),
            assigned("b", assignFrom={"start": 9000, "end": 9001}),
        ],
        NODE,
    )
    assert outcome(plan, "a").assigned == (9001, 9001)
    b = outcome(plan, "b")
    assert (b.state.value, b.reason, b.assigned) == ("Conflicted", "NoFreePort", None)
    assert "9000-9001" in b.message and outcome(plan, "fixed").state.value == "Applied"


def test_what_takes_no_host_port_gets_none() -> None:
    routed = net("r", "10.0.0.0/24", gatewayMode="routed")
    plan = planner.plan(
        [
            routed,
            assigned("routed"),
            assigned("elsewhere", nodeSelector={"matchLabels": {"zone": "b"}}),
            assigned("notlocal", hostIP="192.0.2.99", target={"address": "10.9.0.2", "port": 80}),
        ],
        NODE,
    )
    assert {
        o.ref.name: (o.reason, o.assigned) for o in plan.outcomes if o.ref.kind == PORT_PUBLICATION
    } == {
        "routed": ("Programmed", None),
        "elsewhere": ("NodeSelectorMismatch", None),
        "notlocal": ("HostIPNotLocal", None),
    }
    assert [r.port for r in plan.routed] == [80]


def test_reserved_and_host_binding_apply() -> None:
    facts = replace(
        NODE,
        port_range=(7000, 7001),
        reserved_ports=frozenset({7000}),
        local_reserved_ports=frozenset(),
    )
    plan = planner.plan([net("n", "10.0.0.0/24", hostBinding="127.0.0.1"), assigned("a")], facts)
    o = outcome(plan, "a")
    assert o.assigned == (7001, 7001) and "hostBinding" in o.message
    assert [str(p.listen) for p in plan.proxies] == ["127.0.0.1"] and not plan.dnats


def test_remembered_port_is_kept_for_the_same_uid_only() -> None:
    a = assigned("a")
    fresh = outcome(planner.plan([a], EPHEMERAL), "a").assigned
    remembered = replace(EPHEMERAL, remembered={a.meta.ref: ("", 40000)})
    assert outcome(planner.plan([a], remembered), "a").assigned == (40000, 40000)
    other = replace(EPHEMERAL, remembered={a.meta.ref: ("old-uid", 40000)})
    assert outcome(planner.plan([a], other), "a").assigned == fresh


def test_incumbent_keeps_its_port_against_a_new_fixed_publication() -> None:
    a = assigned("a", "2026-01-02T00:00:00Z")
    facts = replace(
        EPHEMERAL, remembered={a.meta.ref: ("", 40000)}, incumbents=frozenset({a.meta.ref})
    )
    plan = planner.plan([a, pub("fixed", 40000, "2026-01-01T00:00:00Z")], facts)
    assert outcome(plan, "a").assigned == (40000, 40000)
    fixed = outcome(plan, "fixed")
    assert fixed.reason == "PortConflict" and "default/a" in fixed.message


def test_incremental_planner_equals_the_full_planner() -> None:
    inc = IncrementalPlanner()
    resources: list[Any] = [pub("f", 40000), assigned("a"), assigned("b")]
    for step in range(4):
        assert inc.plan(resources, EPHEMERAL) == planner.plan(resources, EPHEMERAL), step
        resources = [*resources, assigned(f"n{step}"), pub(f"g{step}", 41000 + step)]
    resources = resources[1:]
    assert inc.plan(resources, EPHEMERAL) == planner.plan(resources, EPHEMERAL)


PUBS = st.lists(
    st.tuples(
        st.sampled_from(["TCP", "UDP"]),
        st.booleans(),
        st.integers(0, 6),
        st.integers(1, 2),
        st.integers(0, 3),
    ),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(PUBS, st.randoms(use_true_random=False))
def test_planned_ports_never_collide_and_ignore_input_order(raw: list[Any], rng: Any) -> None:
    """Fixed and assigned publications over one small range: every Applied one holds ports
    no other Applied one holds (per protocol), assigned ones inside their range and never a
    reserved port; shuffling the input changes nothing."""
    facts = replace(NODE, reserved_ports=frozenset({9003}))
    resources: list[Any] = []
    for i, (proto, fixed, port, count, age) in enumerate(raw):
        created = f"2026-01-01T00:00:0{age}Z"
        if fixed:
            resources.append(
                pub(
                    f"p{i}",
                    9000 + port,
                    created,
                    protocol=proto,
                    hostPortEnd=9000 + port + count - 1,
                )
            )
        else:
            resources.append(
                assigned(
                    f"p{i}",
                    created,
                    protocol=proto,
                    assignFrom={"start": 9000, "end": 9007, "count": count},
                )
            )
    plan = planner.plan(resources, facts)
    held: dict[tuple[str, int], str] = {}
    for res in resources:
        o = outcome(plan, res.meta.ref.name)
        if o.state.value != "Applied":
            continue
        first, last = o.assigned or (res.host_port, res.host_port_end)
        if res.assign is not None:
            assert 9000 <= first <= last <= 9007 and 9003 not in range(first, last + 1)
        for port in range(first, last + 1):
            assert (res.protocol.value, port) not in held, (res.meta.ref, held)
            held[(res.protocol.value, port)] = res.meta.ref.name
    shuffled = list(resources)
    rng.shuffle(shuffled)
    assert planner.plan(shuffled, facts) == plan


# -- the report and the status ------------------------------------------------------------------


def test_assigned_ports_survive_the_compact_nodestate() -> None:
    plan = planner.plan([assigned("a"), pub("b", 8080)], EPHEMERAL)
    entries = tuple(
        report.Entry("n1", o.ref, "u", 1, o.state.value, o.reason, o.message, assigned=o.assigned)
        for o in plan.outcomes
    )
    rep = report.Report("n1", "v", "t", 1.0, "d", {}, entries)
    status, _ = rep.status()
    assert [e["name"] for e in status["resources"]] == ["a"]  # b is only in the digest
    assert status["applied"]["count"] == 1
    back = report.assigned_ports(report.entries("n1", status))
    assert back == {ref("a"): ("u", outcome(plan, "a").assigned[0])}


def test_status_lists_each_node_and_summarises() -> None:
    res = status_mod.Resource(ref("a"), "u", 1)

    def entry(node: str, port: int) -> report.Entry:
        return report.Entry(node, ref("a"), "u", 1, "Applied", assigned=(port, port))

    same = status_mod.compute_status(res, [entry("n2", 40000), entry("n1", 40000)], "T")
    assert same["assignedPort"] == "40000"
    assert same["assignedPorts"] == [{"node": "n1", "port": 40000}, {"node": "n2", "port": 40000}]
    differ = status_mod.compute_status(res, [entry("n1", 40000), entry("n2", 40001)], "T")
    assert differ["assignedPort"] == "2 ports on 2 nodes"
    none = status_mod.compute_status(res, [report.Entry("n1", ref("a"), "u", 1, "Applied")], "T")
    assert "assignedPorts" not in none
    patch = status_mod.status_patch(same, none)
    assert patch is not None and patch["assignedPorts"] is None and patch["assignedPort"] is None


# -- the agent ----------------------------------------------------------------------------------


def test_the_port_survives_an_agent_restart_through_the_state_file(tmp_path: Path) -> None:
    """The first agent finds the preferred port held by a host process and takes another;
    after a restart (the process gone) the port stays, where a fresh start would differ."""
    a = assigned("a")
    preferred = assign.preferred(a.meta.ref, 32768, 60999, 1)
    state = tmp_path / "state.json"

    def agent(listening: set[int], state_file: Path | None) -> Agent:
        fake = FakeDataplane(addresses=set(NODE.addresses), listening={"TCP": listening})
        return Agent(
            ListSource(a),
            AgentSettings("node-1", state_file=state_file, resync=3600),
            proxies=HeldPorts(set()),
            dataplane=fake,
        )

    async def port(agent: Agent) -> int:
        rep = await agent.reconcile()
        assert rep is not None
        (o,) = rep.outcomes
        assert o.assigned is not None
        return o.assigned[0]

    first = asyncio.run(port(agent({preferred}, state)))
    assert first != preferred
    assert asyncio.run(port(agent(set(), state))) == first
    assert asyncio.run(port(agent(set(), None))) == preferred


def test_a_port_a_host_process_took_is_replaced() -> None:
    a = assigned("a", assignFrom={"start": 9000, "end": 9009})
    preferred = assign.preferred(a.meta.ref, 9000, 9009, 1)
    proxies = HeldPorts({preferred})
    agent = Agent(
        ListSource(a),
        AgentSettings("node-1", resync=3600),
        proxies=proxies,
        dataplane=FakeDataplane(addresses=set(NODE.addresses)),
    )

    async def body() -> tuple[Any, Any]:
        one = await agent.reconcile()
        two = await agent.reconcile()
        return one, two

    one, two = asyncio.run(body())
    assert (one.outcomes[0].reason, one.outcomes[0].assigned) == (
        "PortInUse",
        (preferred, preferred),
    )
    assert two.outcomes[0].reason == "Programmed"
    assert two.outcomes[0].assigned not in (None, (preferred, preferred))


def test_kube_recall_feeds_the_first_reconcile() -> None:
    a = assigned("a")
    calls: list[int] = []

    def recall() -> dict[ResourceRef, tuple[str, int]] | None:
        calls.append(1)
        return None if len(calls) == 1 else {a.meta.ref: ("", 45678)}

    agent = Agent(
        ListSource(a),
        AgentSettings("node-1", resync=3600),
        proxies=HeldPorts(set()),
        dataplane=FakeDataplane(addresses=set(NODE.addresses)),
        recall=recall,
    )

    async def body() -> Any:
        assert await agent.reconcile() is None  # not read back yet: nothing is touched
        return await agent.reconcile()

    rep = asyncio.run(body())
    assert rep.outcomes[0].assigned == (45678, 45678) and len(calls) == 2


def test_node_facts_default_to_linux_range() -> None:
    assert NodeFacts("n").port_range == assign.DEFAULT_RANGE
    assert ipaddress.ip_address("192.0.2.1") in NODE.addresses
