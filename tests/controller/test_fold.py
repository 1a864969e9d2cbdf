"""The controller's fold of summarised node reports (pure): exact counts without entries.

Scenarios: every node proves every resource Applied through its digests; a nodeSelector
that does not match is derived from the reported labels; listed exceptions are used as they
are; a node that lags one change shows exactly that resource pending (not its bucket
neighbours); a node stuck past the window makes its bucket pending, never Ready; reports of
earlier agents (entries, no digests) still count. Property (hypothesis): over random
resources, selectors, edit histories and node lags, the fold gives the same status as the
full per-node entries would.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as stt

from bridgeport.core import status as st
from bridgeport.core import summary
from bridgeport.core.fold import ClusterView, Tracked
from bridgeport.core.report import Entry, entries
from bridgeport.core.specs import NodeSelector, ResourceRef

PP = "PortPublication"
NOW = "2026-01-01T00:00:00Z"
ALL = NodeSelector()
ZONE_A = NodeSelector((("zone", "a"),))


def ref(i: int) -> ResourceRef:
    return ResourceRef(PP, "ns", f"p{i}")


def node_status(
    labels: dict[str, str],
    applied: list[tuple[ResourceRef, str, int]],
    listed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "labels": labels,
        "resources": listed or [],
        "applied": {
            "count": len(applied),
            "buckets": summary.BUCKETS,
            "digest": summary.encode(summary.digests(applied)),
        },
    }


def status(view: ClusterView, t: Tracked) -> dict[str, Any]:
    view.flush()
    reports, ready, inactive = view.inputs(t.ref)
    return st.compute_status(st.Resource(t.ref, t.uid, t.generation), reports, NOW, ready, inactive)


def test_digests_prove_applied_without_entries() -> None:
    view = ClusterView()
    ts = [Tracked(ref(i), f"u{i}", 1, ALL) for i in range(50)]
    for t in ts:
        view.put_resource(t, 0.0)
    for n in range(5):
        view.put_node(f"n{n}", node_status({}, [(t.ref, t.uid, 1) for t in ts]))
    s = status(view, ts[7])
    assert s["ready"] == "5/5" and s["problemNodes"] == []


def test_selector_mismatch_is_derived_from_labels() -> None:
    view = ClusterView()
    t = Tracked(ref(1), "u1", 1, ZONE_A)
    view.put_resource(t, 0.0)
    view.put_node("a", node_status({"zone": "a"}, [(t.ref, t.uid, 1)]))
    view.put_node("b", node_status({"zone": "b"}, []))
    assert status(view, t)["ready"] == "1/1"
    view.drop_node("a")
    s = status(view, t)
    assert s["ready"] == "0/0" and st.condition(s["conditions"], "Ready")["reason"] == "NotSelected"


def test_listed_exception_counts_as_reported() -> None:
    view = ClusterView()
    t = Tracked(ref(1), "u1", 1, ALL)
    view.put_resource(t, 0.0)
    entry = {
        "kind": PP,
        "namespace": "ns",
        "name": "p1",
        "uid": "u1",
        "observedGeneration": 1,
        "state": "Conflicted",
        "reason": "PortInUse",
        "message": "taken by ns/p0",
    }
    view.put_node("a", node_status({}, [], [entry]))
    view.put_node("b", node_status({}, [(t.ref, "u1", 1)]))
    s = status(view, t)
    assert s["ready"] == "1/2"
    assert [p["node"] for p in s["problemNodes"]] == ["a"]


def test_lagging_node_pends_only_the_changed_resource() -> None:
    view = ClusterView()
    ts = [Tracked(ref(i), f"u{i}", 1, ALL) for i in range(2000)]
    for t in ts:
        view.put_resource(t, 0.0)
    old = [(t.ref, t.uid, 1) for t in ts]
    for n in ("a", "b"):
        view.put_node(n, node_status({}, old))
    changed = Tracked(ts[3].ref, "u3", 2, ALL)
    neighbours = [
        t
        for t in ts
        if summary.bucket_of(t.ref) == summary.bucket_of(changed.ref) and t.ref != changed.ref
    ]
    assert neighbours  # 2,000 resources in 256 buckets
    dirty = view.put_resource(changed, 1.0)
    assert changed.ref in dirty
    view.put_node("a", node_status({}, [(r, u, 2 if r == changed.ref else 1) for r, u, _ in old]))
    s = status(view, changed)
    assert s["ready"] == "1/2" and s["problemNodes"] == [
        {
            "node": "b",
            "state": "Applied",
            "reason": "GenerationPending",
            "message": "applied generation 1, current is 2",
        }
    ]
    assert status(view, neighbours[0])["ready"] == "2/2"


def test_stuck_node_is_pending_never_ready() -> None:
    view = ClusterView(window=10.0)
    t = Tracked(ref(1), "u1", 1, ALL)
    view.put_resource(t, 0.0)
    view.put_node("a", node_status({}, [(t.ref, "u1", 1)]))
    t2 = Tracked(t.ref, "u1", 2, ALL)
    view.put_resource(t2, 5.0)
    assert status(view, t2)["ready"] == "0/1"
    view.expire(100.0)
    assert t2.ref in view.flush()
    s = status(view, t2)
    assert s["ready"] == "0/1"
    assert "not yet reported generation 2" in s["problemNodes"][0]["message"]


def test_new_resource_not_yet_applied_is_pending() -> None:
    view = ClusterView()
    view.put_node("a", node_status({}, []))
    t = Tracked(ref(1), "u1", 1, ALL)
    view.put_resource(t, 0.0)
    assert status(view, t)["ready"] == "0/1"
    view.put_node("a", node_status({}, [(t.ref, "u1", 1)]))
    assert status(view, t)["ready"] == "1/1"


def test_reports_without_digests_still_count() -> None:
    view = ClusterView()
    t = Tracked(ref(1), "u1", 2, ALL)
    view.put_resource(t, 0.0)
    entry = {
        "kind": PP,
        "namespace": "ns",
        "name": "p1",
        "uid": "u1",
        "observedGeneration": 2,
        "state": "Applied",
    }
    view.put_node("old-agent", {"resources": [entry]})
    view.put_node("new-agent", node_status({}, [(t.ref, "u1", 2)]))
    assert status(view, t)["ready"] == "2/2"


# -- property: the fold equals the full entries -------------------------------------------------

SELECTORS = [ALL, ZONE_A, NodeSelector((("zone", "b"),))]
LABELS = [{}, {"zone": "a"}, {"zone": "b"}]


@stt.composite
def worlds(draw: Any) -> dict[str, Any]:
    n_res = draw(stt.integers(1, 12))
    history = []  # per resource: generations it went through (last is current)
    selectors = []
    for _ in range(n_res):
        history.append(list(range(1, draw(stt.integers(1, 3)) + 1)))
        selectors.append(draw(stt.sampled_from(SELECTORS)))
    nodes = []
    for _ in range(draw(stt.integers(1, 5))):
        labels = draw(stt.sampled_from(LABELS))
        # What this node has of each resource: None (nothing), a generation, or "Conflicted".
        view = [draw(stt.sampled_from([None, "Conflicted", *history[i]])) for i in range(n_res)]
        nodes.append((labels, view))
    return {"history": history, "selectors": selectors, "nodes": nodes}


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_fold_equals_full_entries(world: dict[str, Any]) -> None:
    view = ClusterView()
    current: list[Tracked] = []
    for i, gens in enumerate(world["history"]):
        for g in gens:  # every generation is a recent change: a candidate explanation
            view.put_resource(Tracked(ref(i), f"u{i}", g, world["selectors"][i]), 0.0)
        current.append(Tracked(ref(i), f"u{i}", gens[-1], world["selectors"][i]))
    full: list[Entry] = []
    for n, (labels, has) in enumerate(world["nodes"]):
        name = f"n{n}"
        applied, listed = [], []
        for t, got in zip(current, has, strict=True):
            selected = t.selector is not None and t.selector.matches(labels)
            if got == "Conflicted":
                entry = {
                    "kind": PP,
                    "namespace": "ns",
                    "name": t.ref.name,
                    "uid": t.uid,
                    "observedGeneration": t.generation,
                    "state": "Conflicted",
                    "reason": "PortInUse",
                    "message": "m",
                }
                listed.append(entry)
                full.append(entries(name, {"resources": [entry]})[0])
            elif got is None or (got == t.generation and not selected):
                # Nothing applied: pending where it is selected, else Inactive.
                full.append(
                    Entry(
                        name,
                        t.ref,
                        t.uid,
                        None if selected else t.generation,
                        "Applied" if selected else "Inactive",
                    )
                )
            else:
                applied.append((t.ref, t.uid, got))
                full.append(Entry(name, t.ref, t.uid, got, "Applied"))
        view.put_node(name, node_status(labels, applied, listed))
    for t in current:
        resource = st.Resource(t.ref, t.uid, t.generation)
        reports = [r for r in full if r.ref == t.ref]
        expected = st.compute_status(resource, reports, NOW)
        got = status(view, t)
        assert (got["ready"], got["nodes"]) == (expected["ready"], expected["nodes"])
        assert got["problemNodes"] == expected["problemNodes"]
        # Derived Inactive nodes have no message of their own to quote: only it may differ.
        assert _unquoted(got["conditions"]) == _unquoted(expected["conditions"])


def _unquoted(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**c, "message": ""} if c["reason"] == "NotSelected" else c for c in conditions]
