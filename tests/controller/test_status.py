"""Status aggregation: NodeState reports -> a resource's .status, and Event transitions.

Scenarios: all nodes Applied at the current generation (Ready True, "2/2", quoting what the
nodes programmed and how many differ); a stale
generation keeps Ready False (NodesPending) until reports catch up; Inactive nodes are not
selected (NotSelected, or NoReports when nobody reported); Conflicted and Invalid conditions
quote a node's message (which names the winner), and Ready's reason takes the most serious
state; reports of another incarnation (uid) are ignored, uid-less ones count; at most 16
problem nodes, sorted, with the total in Ready's message; lastTransitionTime moves only when a
status changes; other tools' conditions survive; malformed report entries are skipped;
merge patches carry changed fields only; condition reasons that are not CamelCase words are
replaced. Transitions: Ready -> True (Normal), Conflicted -> True
(Warning, with the message), Conflicted -> False (Normal ConflictResolved), Invalid -> True,
Ready reason -> Failed; nothing for an unchanged status or a rollout in progress.
Properties: deterministic and independent of report order; ready <= selected; problemNodes
bounded and sorted; recomputing from our own output is a fixed point with no transitions.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core import report
from bridgeport.core import status as s
from bridgeport.core.report import Entry
from bridgeport.core.specs import ResourceRef

REF = ResourceRef("PortPublication", "default", "web")
UID = "uid-1"
T0, T1 = "2026-11-21T23:00:00Z", "2026-11-21T23:05:00Z"


def res(generation: int = 1, conditions: Any = (), uid: str = UID) -> s.Resource:
    return s.Resource(REF, uid, generation, tuple(conditions))


def rep(
    node: str,
    state: str = "Applied",
    gen: int | None = 1,
    uid: str = UID,
    reason: str = "",
    message: str = "",
    ref: ResourceRef = REF,
) -> Entry:
    return Entry(node, ref, uid, gen, state, reason, message)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    found = s.condition(status["conditions"], ctype)
    assert found is not None
    return dict(found)


def test_all_applied_is_ready() -> None:
    """Two nodes Applied at the current generation: Ready True, 2/2, no problem nodes."""
    out = s.compute_status(res(), [rep("a"), rep("b")], T0)
    assert out["ready"] == "2/2" and out["nodes"] == {"selected": 2, "ready": 2}
    assert out["observedGeneration"] == 1 and out["problemNodes"] == []
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == (
        "True",
        "AllNodesReady",
        T0,
    )
    assert ready["observedGeneration"] == 1
    assert cond(out, "Conflicted")["status"] == "False"
    assert cond(out, "Invalid")["status"] == "False"
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Conflicted", "Invalid"]
    assert "problemNodesOmitted" not in out


def test_ready_says_what_was_programmed() -> None:
    """Ready True quotes the first node's programming (both families of a dual-stack
    publication, say), and counts the nodes that programmed something else."""
    both = "8080/TCP -> 10.0.0.2:80 via kernel DNAT; [fd00::2]:80 via kernel DNAT"
    proxied = "8080/TCP -> 10.0.0.2:80 via kernel DNAT; [fd00::2]:80 via proxy on ::"
    same = cond(
        s.compute_status(res(), [rep("b", message=both), rep("a", message=both)], T0), "Ready"
    )
    assert same["message"] == f"2/2 selected nodes ready at generation 1: {both}"
    mixed = cond(
        s.compute_status(
            res(),
            [rep("a", message=both), rep("b", message=proxied), rep("c", message=proxied)],
            T0,
        ),
        "Ready",
    )
    assert mixed["message"].endswith(f": {both} (2 nodes differ)")


def test_stale_generation_is_pending() -> None:
    """A new generation not yet reported: Ready False NodesPending, the node listed."""
    out = s.compute_status(res(2), [rep("a", gen=2), rep("b", gen=1)], T0)
    assert out["ready"] == "1/2" and out["observedGeneration"] == 2
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodesPending")
    assert "not yet at generation 2" in ready["message"]
    assert out["problemNodes"] == [
        {
            "node": "b",
            "state": "Applied",
            "reason": "GenerationPending",
            "message": "applied generation 1, current is 2",
        }
    ]


def test_missing_generation_is_pending() -> None:
    """A report without observedGeneration never counts as ready."""
    out = s.compute_status(res(), [rep("a", gen=None)], T0)
    assert out["ready"] == "0/1" and cond(out, "Ready")["reason"] == "NodesPending"


def test_inactive_nodes_are_not_selected() -> None:
    """An Inactive node (selector mismatch, hostIP elsewhere) counts in neither number."""
    out = s.compute_status(
        res(), [rep("a"), rep("b", "Inactive", reason="NodeSelectorMismatch")], T0
    )
    assert out["ready"] == "1/1" and cond(out, "Ready")["status"] == "True"
    assert out["problemNodes"] == []


def test_all_inactive_is_not_selected() -> None:
    """Every node Inactive: Ready False NotSelected, 0/0, quoting a node."""
    out = s.compute_status(
        res(),
        [
            rep("b", "Inactive", message="hostIP not local"),
            rep("a", "Inactive", message="selector"),
        ],
        T0,
    )
    ready = cond(out, "Ready")
    assert out["ready"] == "0/0" and (ready["status"], ready["reason"]) == ("False", "NotSelected")
    assert "node a: selector" in ready["message"]


def test_no_reports() -> None:
    """Nobody reported yet: Ready False NoReports."""
    out = s.compute_status(res(), [], T0)
    assert out["ready"] == "0/0" and cond(out, "Ready")["reason"] == "NoReports"


def test_conflicted_quotes_the_winner() -> None:
    """A Conflicted node: Conflicted True quoting its message; Ready False Conflicted."""
    msg = "8080/TCP is claimed by PortPublication default/first (older)"
    out = s.compute_status(
        res(), [rep("a"), rep("b", "Conflicted", reason="PortConflict", message=msg)], T0
    )
    c = cond(out, "Conflicted")
    assert (c["status"], c["reason"]) == ("True", "PortConflict")
    assert c["message"] == f"node b: {msg}"
    assert cond(out, "Ready")["reason"] == "Conflicted" and out["ready"] == "1/2"
    assert out["problemNodes"] == [
        {"node": "b", "state": "Conflicted", "reason": "PortConflict", "message": msg}
    ]


def test_conflict_on_several_nodes_counts_them() -> None:
    """The first node by name is quoted, the others counted."""
    out = s.compute_status(res(), [rep(n, "Conflicted", message=f"m-{n}") for n in "cab"], T0)
    assert cond(out, "Conflicted")["message"] == "node a: m-a (and 2 more nodes)"


def test_stale_conflict_still_reported() -> None:
    """A conflict reported for the previous generation stays visible until the node catches up."""
    out = s.compute_status(res(2), [rep("a", "Conflicted", gen=1, message="m")], T0)
    assert cond(out, "Conflicted")["status"] == "True"


def test_invalid_outranks_conflicted() -> None:
    """Ready's reason is the most serious state: Invalid > Conflicted > Failed > pending."""
    reports = [
        rep("a", "Conflicted", message="c"),
        rep("b", "Invalid", reason="BadSpec", message="bad port"),
        rep("c", "Failed", message="f"),
        rep("d", gen=0),
    ]
    out = s.compute_status(res(), reports, T0)
    assert cond(out, "Ready")["reason"] == "Invalid"
    inv = cond(out, "Invalid")
    assert (inv["status"], inv["reason"], inv["message"]) == ("True", "BadSpec", "node b: bad port")
    assert cond(s.compute_status(res(), reports[2:], T0), "Ready")["reason"] == "Failed"


def test_other_uid_is_ignored() -> None:
    """Reports about a deleted resource with the same name (other uid) are not inherited."""
    out = s.compute_status(res(uid="new"), [rep("a", uid="old"), rep("b", uid="new")], T0)
    assert out["ready"] == "1/1"


def test_uidless_reports_count() -> None:
    """An entry without uid (older agent, standalone) matches by kind/namespace/name."""
    assert s.compute_status(res(), [rep("a", uid="")], T0)["ready"] == "1/1"


def test_uid_match_beats_uidless_on_one_node() -> None:
    """Two entries from one node: the one with our uid wins."""
    out = s.compute_status(res(), [rep("a", "Failed", uid=""), rep("a", uid=UID)], T0)
    assert out["ready"] == "1/1"


def test_other_resources_are_ignored() -> None:
    """Entries for another resource do not count."""
    other = ResourceRef("PortPublication", "other", "web")
    assert s.compute_status(res(), [rep("a", ref=other)], T0)["ready"] == "0/0"


def test_problem_nodes_bounded_and_sorted() -> None:
    """20 problem nodes: the first 16 by name; Ready's message gives the total."""
    reports = [rep(f"node-{i:02d}", "Failed", message="x") for i in reversed(range(20))]
    out = s.compute_status(res(), reports, T0)
    names = [p["node"] for p in out["problemNodes"]]
    assert names == [f"node-{i:02d}" for i in range(16)] and out["ready"] == "0/20"
    assert "problemNodes lists 16 of 20" in cond(out, "Ready")["message"]
    fewer = s.compute_status(res(), reports[:16], T0)
    assert "problemNodes lists" not in cond(fewer, "Ready")["message"]


def test_bad_reasons_are_replaced() -> None:
    """A node reason that is not a metav1 reason (the CRD's pattern) falls back to the state."""
    out = s.compute_status(
        res(), [rep("a", "Conflicted", reason="port-conflict!"), rep("b", "Invalid", reason="")], T0
    )
    assert cond(out, "Conflicted")["reason"] == "Conflicted"
    assert cond(out, "Invalid")["reason"] == "Invalid"
    assert "problemNodesOmitted" not in out


def test_long_messages_are_clipped() -> None:
    """A huge node message is clipped in problemNodes and in conditions."""
    out = s.compute_status(res(), [rep("a", "Conflicted", message="x" * 100_000)], T0)
    assert len(out["problemNodes"][0]["message"]) == s.MAX_NODE_MESSAGE
    assert len(cond(out, "Conflicted")["message"]) == s.MAX_CONDITION_MESSAGE


def test_transition_time_kept_while_status_unchanged() -> None:
    """Same status, new reason/message: lastTransitionTime kept; status flips: now."""
    first = s.compute_status(res(2), [rep("a", gen=1)], T0)
    second = s.compute_status(res(2, first["conditions"]), [rep("a", "Failed", gen=2)], T1)
    assert cond(second, "Ready")["lastTransitionTime"] == T0
    assert cond(second, "Ready")["reason"] == "Failed"
    third = s.compute_status(res(2, second["conditions"]), [rep("a", gen=2)], T1)
    assert cond(third, "Ready")["lastTransitionTime"] == T1


def test_foreign_conditions_survive() -> None:
    """A condition type we do not own is kept, after ours."""
    foreign = {
        "type": "Audited",
        "status": "True",
        "reason": "X",
        "message": "",
        "lastTransitionTime": T0,
    }
    out = s.compute_status(res(1, [foreign]), [rep("a")], T1)
    assert out["conditions"][-1] == foreign and len(out["conditions"]) == 4


def test_parse_reports_skips_malformed() -> None:
    """Entries without kind, name or state, or of the wrong type, are skipped."""
    status = {
        "resources": [
            {
                "kind": "PortPublication",
                "namespace": "default",
                "name": "web",
                "uid": UID,
                "observedGeneration": 2,
                "state": "Applied",
                "reason": "Programmed",
                "message": "ok",
                "proxy": "listening",
            },
            {
                "kind": "BridgeNetwork",
                "namespace": "",
                "name": "br0",
                "state": "Inactive",
                "observedGeneration": True,
            },
            {"name": "x", "state": "Applied"},
            {"kind": "PortPublication", "name": "y"},
            "junk",
            None,
        ]
    }
    got = report.entries("n1", status)
    assert got == (
        Entry("n1", REF, UID, 2, "Applied", "Programmed", "ok", proxy="listening"),
        Entry("n1", ResourceRef("BridgeNetwork", "", "br0"), "", None, "Inactive"),
    )
    assert report.entries("n1", None) == () and report.entries("n1", {"resources": 3}) == ()


def test_resource_from_body() -> None:
    """Kind, namespace, name, uid, generation and conditions from an API object."""
    body = {
        "kind": "BridgeNetwork",
        "metadata": {"name": "br0", "uid": "u", "generation": 3},
        "status": {"conditions": [{"type": "Ready", "status": "True"}, "junk"]},
    }
    r = s.resource_from_body(body)
    assert r == s.Resource(
        ResourceRef("BridgeNetwork", "", "br0"), "u", 3, ({"type": "Ready", "status": "True"},)
    )
    assert s.resource_from_body({"kind": "PortPublication", "metadata": {}}).generation == 0


def test_transitions_ready_and_conflict() -> None:
    """Ready False->True: Normal Ready; Conflicted becoming True: Warning with the message."""
    pending = s.compute_status(res(), [rep("a", gen=0)], T0)["conditions"]
    ready = s.compute_status(res(1, pending), [rep("a")], T1)["conditions"]
    assert [(t.type, t.reason) for t in s.transitions(pending, ready)] == [("Normal", "Ready")]
    conflicted = s.compute_status(res(1, ready), [rep("a", "Conflicted", message="m")], T1)[
        "conditions"
    ]
    ts = s.transitions(ready, conflicted)
    assert [(t.type, t.reason, t.message) for t in ts] == [("Warning", "Conflicted", "node a: m")]
    resolved = s.compute_status(res(1, conflicted), [rep("a")], T1)["conditions"]
    assert [(t.type, t.reason) for t in s.transitions(conflicted, resolved)] == [
        ("Normal", "Ready"),
        ("Normal", "ConflictResolved"),
    ]


def test_transitions_first_status() -> None:
    """No previous status: Ready True gives Ready; False/False conditions give nothing."""
    assert [
        t.reason for t in s.transitions((), s.compute_status(res(), [rep("a")], T0)["conditions"])
    ] == ["Ready"]
    assert s.transitions((), s.compute_status(res(), [], T0)["conditions"]) == []


def test_transitions_invalid_and_failed() -> None:
    """Invalid becoming True and Ready's reason becoming Failed are Warnings, once."""
    inv = s.compute_status(res(), [rep("a", "Invalid", message="bad")], T0)["conditions"]
    assert [(t.type, t.reason) for t in s.transitions((), inv)] == [("Warning", "Invalid")]
    failed = s.compute_status(res(), [rep("a", "Failed", message="nft")], T0)["conditions"]
    assert [(t.type, t.reason) for t in s.transitions((), failed)] == [("Warning", "Failed")]
    again = s.compute_status(res(1, failed), [rep("a", "Failed", message="nft2")], T1)
    assert s.transitions(failed, again["conditions"]) == []


def test_rollout_is_silent() -> None:
    """Ready True -> False because a new generation is rolling out: no Event."""
    ready = s.compute_status(res(1), [rep("a")], T0)["conditions"]
    pending = s.compute_status(res(2, ready), [rep("a")], T1)["conditions"]
    assert s.transitions(ready, pending) == []


def test_status_patch() -> None:
    """Unchanged: None; otherwise the changed fields only, others' fields untouched."""
    big = s.compute_status(res(), [rep(f"n{i:02d}", "Failed") for i in range(20)], T0)
    assert s.status_patch(big, big) is None
    small = s.compute_status(res(1, big["conditions"]), [rep("n00", "Failed")], T0)
    patch = s.status_patch({**big, "other": {"x": 1}}, small)
    assert patch is not None and set(patch) == {"ready", "nodes", "conditions", "problemNodes"}
    assert s.status_patch(None, small) == small


# -- properties ---------------------------------------------------------------------------------

STATES = ("Applied", "Inactive", "Conflicted", "Invalid", "Failed")
reports_st = st.lists(
    st.builds(
        rep,
        node=st.sampled_from([f"n{i}" for i in range(30)]),
        state=st.sampled_from(STATES),
        gen=st.sampled_from([None, 1, 2, 3]),
        uid=st.sampled_from(["", UID, "other"]),
        reason=st.sampled_from(["", "R", "Port-Conflict"]),
        message=st.sampled_from(["", "m1", "m2"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(reports=reports_st, generation=st.integers(1, 3), data=st.data())
def test_properties(reports: list[Entry], generation: int, data: st.DataObject) -> None:
    """Deterministic, order independent, ready <= selected, problems bounded and sorted,
    reasons valid for the CRD."""
    out = s.compute_status(res(generation), reports, T0)
    shuffled = data.draw(st.permutations(reports))
    assert s.compute_status(res(generation), shuffled, T0) == out
    n = out["nodes"]
    assert 0 <= n["ready"] <= n["selected"] and out["ready"] == f"{n['ready']}/{n['selected']}"
    problems = out["problemNodes"]
    assert len(problems) <= s.MAX_PROBLEM_NODES
    assert [p["node"] for p in problems] == sorted(p["node"] for p in problems)
    assert len(problems) == min(s.MAX_PROBLEM_NODES, n["selected"] - n["ready"])
    assert (cond(out, "Ready")["status"] == "True") == (0 < n["ready"] == n["selected"])
    assert all(s._REASON.match(c["reason"]) for c in out["conditions"])


@settings(max_examples=200, deadline=None)
@given(reports=reports_st, generation=st.integers(1, 3))
def test_fixed_point(reports: list[Entry], generation: int) -> None:
    """Recomputing from our own output, later, changes nothing and posts no Event."""
    first = s.compute_status(res(generation), reports, T0)
    second = s.compute_status(res(generation, first["conditions"]), reports, T1)
    assert second == first
    assert s.transitions(first["conditions"], second["conditions"]) == []
    assert s.status_patch(first, second) is None


def test_subnet_overlapping_a_node_network_is_a_warning_condition() -> None:
    """Issue 11: a BridgeNetwork applied with the SubnetOverlapsNode warning stays Ready and
    gets a SubnetOverlapsNode condition (and one Warning Event); PortPublications never do."""
    bn = ResourceRef("BridgeNetwork", "", "br0")
    resource = s.Resource(bn, UID, 1)
    warned = rep("a", reason="SubnetOverlapsNode", message="warning: subnet overlaps", ref=bn)
    out = s.compute_status(resource, [warned, rep("b", ref=bn)], T0)
    assert cond(out, "Ready")["status"] == "True"
    overlap = cond(out, "SubnetOverlapsNode")
    assert overlap["status"] == "True" and "node a: warning" in overlap["message"]
    events = s.transitions([], out["conditions"])
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Ready"),
        ("Warning", "SubnetOverlapsNode"),
    ]
    clean = s.compute_status(
        s.Resource(bn, UID, 1, tuple(out["conditions"])), [rep("a", ref=bn)], T1
    )
    assert cond(clean, "SubnetOverlapsNode")["status"] == "False"
    assert (
        s.condition(s.compute_status(res(1), [rep("a")], T0)["conditions"], "SubnetOverlapsNode")
        is None
    )
