"""The agent's cluster cache (kube/cache.py): pure logic, no API server.

Scenarios:
- publications that cannot select the node are stubs, not in the snapshot; the others, the
  networks and invalid objects are
- nothing is handed out before every collection was listed once
- a status-only change (same uid and generation) changes nothing; a stub-only change does
  not wake the agent
- a listing sweeps what it did not return (deletes missed, deletes during a relist), and
  notifies once at its end; a listing that failed half-way still notifies when one completes
- a delete of another incarnation (a different uid) is ignored
- node labels that no stub matches switch at once; labels that stubs match stay pending
  until a relist brings their specs, then switch; a flip back cancels; specs of labels the
  node lost become stubs
- selectors are shared between stubs
- hypothesis: after any sequence of events and relists the snapshot equals what a fresh
  cache listing the final state would hold
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.core.specs import BRIDGE_NETWORK, PORT_PUBLICATION, InvalidResource
from bridgeport.kube.cache import NODE, ClusterCache, Labels

API = "bridgeport.io/v1alpha1"


def pp(
    name: str,
    zone: str | None = None,
    gen: int = 1,
    uid: str | None = None,
    port: int = 8080,
    bad: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"hostPort": port, "target": {"address": "10.0.0.2", "port": 80}}
    if zone is not None:
        spec["nodeSelector"] = {"matchLabels": {"zone": zone}}
    if bad:
        spec["hostPort"] = "nope"
    return {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "generation": gen,
            "uid": uid or f"uid-{name}",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
    }


def bn(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "BridgeNetwork",
        "metadata": {"name": name, "generation": 1, "uid": f"uid-{name}"},
        "spec": {"subnet": "10.0.0.0/24"},
    }


def node(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "uid": "node-uid", "labels": labels}}


def listed(cache: ClusterCache, kind: str, *objs: dict[str, Any]) -> bool:
    cache.begin_list(kind)
    for o in objs:
        cache.put(kind, o)
    return cache.end_list(kind)


def names(cache: ClusterCache) -> set[str]:
    snap = cache.snapshot()
    assert snap is not None
    return {
        (r.ref if isinstance(r, InvalidResource) else r.meta.ref).name  # type: ignore[union-attr]
        for r in snap.resources
    }


def ready(labels: dict[str, str], *pubs: dict[str, Any]) -> ClusterCache:
    cache = ClusterCache()
    listed(cache, NODE, node(labels))
    listed(cache, BRIDGE_NETWORK, bn("net"))
    assert listed(cache, PORT_PUBLICATION, *pubs)  # the first complete listing notifies
    return cache


def test_only_what_can_select_the_node_is_kept_in_full() -> None:
    cache = ready(
        {"zone": "a"}, pp("mine", "a"), pp("other", "b"), pp("all"), pp("broken", "b", bad=True)
    )
    assert names(cache) == {"net", "mine", "all", "broken"}
    assert set(cache.stubs) == {("ns", "other")}
    snap = cache.snapshot()
    assert snap is not None and snap.node_labels == {"zone": "a"}
    assert cache.node_uid == "node-uid"


def test_nothing_before_every_collection_was_listed() -> None:
    cache = ClusterCache()
    listed(cache, NODE, node({}))
    assert not listed(cache, PORT_PUBLICATION, pp("x"))
    assert cache.snapshot() is None
    assert listed(cache, BRIDGE_NETWORK)
    assert names(cache) == {"x"}


def test_status_only_and_stub_only_changes_do_not_wake() -> None:
    cache = ready({"zone": "a"}, pp("mine", "a"), pp("other", "b"))
    assert not cache.put(PORT_PUBLICATION, pp("mine", "a"))  # same uid and generation
    assert not cache.put(PORT_PUBLICATION, pp("other", "c", gen=2))  # still a stub
    assert not cache.put(PORT_PUBLICATION, pp("new", "b"))
    assert not cache.delete(PORT_PUBLICATION, pp("new", "b"))
    assert cache.put(PORT_PUBLICATION, pp("mine", "a", gen=2, port=9090))
    assert cache.put(PORT_PUBLICATION, pp("other", "a", gen=3))  # now it selects the node
    assert names(cache) == {"net", "mine", "other"}
    assert cache.put(PORT_PUBLICATION, pp("mine", "b", gen=3))  # now it does not
    assert names(cache) == {"net", "other"}
    assert cache.delete(PORT_PUBLICATION, pp("other"))


def test_a_relist_sweeps_and_notifies_once() -> None:
    cache = ready({"zone": "a"}, pp("keep", "a"), pp("gone", "a"), pp("stub-gone", "b"))
    cache.begin_list(PORT_PUBLICATION)
    assert not cache.put(PORT_PUBLICATION, pp("keep", "a", gen=2, port=9))  # noted for the end
    assert names(cache) == {"net", "keep", "gone"}  # mid-listing: nothing missing
    assert cache.end_list(PORT_PUBLICATION)
    assert names(cache) == {"net", "keep"}
    assert not cache.stubs
    # A listing that failed half-way owes its notification to the next one.
    cache.begin_list(PORT_PUBLICATION)
    cache.put(PORT_PUBLICATION, pp("keep", "a", gen=3, port=10))
    cache.begin_list(PORT_PUBLICATION)
    cache.put(PORT_PUBLICATION, pp("keep", "a", gen=3, port=10))
    assert cache.end_list(PORT_PUBLICATION)
    # Nothing new: no notification.
    assert not listed(cache, PORT_PUBLICATION, pp("keep", "a", gen=3, port=10))


def test_delete_of_another_incarnation_is_ignored() -> None:
    cache = ready({}, pp("x", uid="new"))
    assert not cache.delete(PORT_PUBLICATION, pp("x", uid="old"))
    assert names(cache) == {"net", "x"}
    # Recreated with the same name and generation: a new uid is a change.
    cache = ready({"zone": "a"}, pp("x", "b", uid="one"))
    assert cache.put(PORT_PUBLICATION, pp("x", "a", uid="two"))
    assert names(cache) == {"net", "x"}


def test_labels_no_stub_matches_switch_at_once() -> None:
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"))
    assert cache.set_labels({"zone": "a", "extra": "1"}) is Labels.CHANGED
    assert cache.set_labels({"zone": "a", "extra": "1"}) is Labels.SAME
    assert cache.set_labels({"zone": "c"}) is Labels.CHANGED  # "a" is demoted to a stub
    assert names(cache) == {"net"}
    assert set(cache.stubs) == {("ns", "a"), ("ns", "b")}
    assert not cache.needs_relist()


def test_labels_stubs_match_wait_for_a_relist() -> None:
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"))
    assert not cache.put(NODE, node({"zone": "b"}))  # pending: the snapshot keeps zone=a
    assert cache.needs_relist()
    snap = cache.snapshot()
    assert snap is not None and snap.node_labels == {"zone": "a"}
    assert names(cache) == {"net", "a"}
    # The relist brings b's spec (same uid and generation: not skipped as unchanged).
    assert listed(cache, PORT_PUBLICATION, pp("a", "a"), pp("b", "b"))
    assert not cache.needs_relist()
    snap = cache.snapshot()
    assert snap is not None and snap.node_labels == {"zone": "b"}
    assert names(cache) == {"net", "b"}
    assert set(cache.stubs) == {("ns", "a")}


def test_labels_flip_back_during_the_relist() -> None:
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"))
    assert cache.set_labels({"zone": "b"}) is Labels.RELIST
    cache.begin_list(PORT_PUBLICATION)
    cache.put(PORT_PUBLICATION, pp("b", "b"))
    assert cache.set_labels({"zone": "a"}) is Labels.SAME
    cache.put(PORT_PUBLICATION, pp("a", "a"))
    cache.end_list(PORT_PUBLICATION)
    assert not cache.needs_relist()
    assert names(cache) == {"net", "a"}
    assert set(cache.stubs) == {("ns", "b")}


def test_labels_change_again_during_the_relist() -> None:
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"), pp("c", "c"))
    cache.set_labels({"zone": "b"})
    cache.begin_list(PORT_PUBLICATION)
    for name in "abc":
        cache.put(PORT_PUBLICATION, pp(name, name))
        if name == "b":
            cache.set_labels({"zone": "c"})  # c is listed after: a spec
    cache.end_list(PORT_PUBLICATION)
    assert names(cache) == {"net", "c"}
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"), pp("c", "c"))
    cache.set_labels({"zone": "c"})
    cache.begin_list(PORT_PUBLICATION)
    cache.put(PORT_PUBLICATION, pp("b", "b"))  # listed as a stub: zone=c is pending
    cache.put(PORT_PUBLICATION, pp("c", "c"))
    cache.set_labels({"zone": "b"})
    cache.put(PORT_PUBLICATION, pp("a", "a"))
    cache.end_list(PORT_PUBLICATION)
    assert cache.needs_relist()  # another round for b
    assert listed(cache, PORT_PUBLICATION, pp("a", "a"), pp("b", "b"), pp("c", "c"))
    assert names(cache) == {"net", "b"}


def test_one_relist_is_asked_per_pending_labels() -> None:
    """A kubelet's Node status updates repeat the pending labels: no second listing of every
    publication. New pending labels, or a listing that began before them, ask again."""
    cache = ready({"zone": "a"}, pp("a", "a"), pp("b", "b"), pp("c", "c"))
    assert cache.set_labels({"zone": "b"}) is Labels.RELIST
    assert cache.ask_relist()
    assert cache.set_labels({"zone": "b"}) is Labels.RELIST  # a status update
    assert not cache.ask_relist()
    cache.begin_list(PORT_PUBLICATION)  # the listing asked for zone=b
    for name in "abc":
        cache.put(PORT_PUBLICATION, pp(name, name))  # c: a stub, zone=c is not pending yet
    assert cache.set_labels({"zone": "c"}) is Labels.RELIST  # other labels: other specs
    assert cache.ask_relist() and not cache.ask_relist()
    cache.end_list(PORT_PUBLICATION)  # began before zone=c: c's spec is still missing
    assert cache.needs_relist() and cache.ask_relist()
    assert listed(cache, PORT_PUBLICATION, pp("a", "a"), pp("b", "b"), pp("c", "c"))
    assert not cache.ask_relist()
    assert names(cache) == {"net", "c"}
    # Back to b after the switch: a relist for b is asked again.
    assert cache.set_labels({"zone": "b"}) is Labels.RELIST
    assert cache.ask_relist()


def test_node_deleted_means_no_labels() -> None:
    cache = ready({"zone": "a"}, pp("a", "a"), pp("all"))
    assert cache.delete(NODE, node({"zone": "a"}))
    assert names(cache) == {"net", "all"}
    assert cache.node_uid == "node-uid"  # NodeStates written now stay owned by it (GC)
    cache = ready({"zone": "a"}, pp("a", "a"))
    assert listed(cache, NODE)  # listed without it: gone
    assert names(cache) == {"net"}


def test_stubs_share_their_selector() -> None:
    cache = ready({"zone": "a"}, *(pp(f"p{i}", "b") for i in range(50)))
    assert len({id(s.selector) for s in cache.stubs.values()}) == 1
    for i in range(50):
        cache.delete(PORT_PUBLICATION, pp(f"p{i}"))
    assert not cache.stubs and not cache._selectors


ZONES = st.sampled_from([None, "a", "b"])
EVENT = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 5), ZONES, st.integers(1, 3)),
    st.tuples(st.just("delete"), st.integers(0, 5), ZONES, st.integers(1, 3)),
    st.tuples(st.just("labels"), st.integers(0, 0), ZONES, st.integers(1, 1)),
    st.tuples(st.just("relist"), st.integers(0, 0), ZONES, st.integers(1, 1)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENT, max_size=40))
def test_any_event_sequence_ends_where_a_fresh_listing_does(events: list[Any]) -> None:
    """The watch's view, with the relists a label change asks for, equals a cache that lists
    the final state from scratch."""
    world: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {"zone": "a"}
    cache = ready(labels)
    incarnations = 0
    for op, i, zone, port in events:
        name = f"p{i}"
        if op == "put":  # the API server's rules: a spec change bumps the generation
            old = world.get(name)
            if old is None:
                incarnations += 1
            gen = old["metadata"]["generation"] + 1 if old else 1
            uid = old["metadata"]["uid"] if old else f"u{incarnations}"
            world[name] = pp(name, zone, gen=gen, uid=uid, port=1000 + port)
            cache.put(PORT_PUBLICATION, world[name])
        elif op == "delete" and name in world:
            cache.delete(PORT_PUBLICATION, world.pop(name))
        elif op == "labels":
            labels = {"zone": zone} if zone else {}
            cache.put(NODE, node(labels))
        if op == "relist" or cache.needs_relist():
            listed(cache, PORT_PUBLICATION, *world.values())
    while cache.needs_relist():
        listed(cache, PORT_PUBLICATION, *world.values())
    fresh = ready(labels, *world.values())
    mine, theirs = cache.snapshot(), fresh.snapshot()
    assert mine is not None and theirs is not None
    assert mine.node_labels == theirs.node_labels
    assert sorted(map(repr, mine.resources)) == sorted(map(repr, theirs.resources))
    assert cache.stubs == fresh.stubs
