"""The agent's reports kept in O(change) always equal the full computation (hypothesis).

- Ledger: over random puts, drops and resets, its counts, listed entries, Applied digests and
  Applied set equal `report.tally` and a count over all its entries, and the changes it hands
  out replay to its entries.
- Stamper: over random resource lists (unchanged resources are the same objects, as sources
  keep them) it stamps what `firstseen.stamp` stamps and remembers the same times.
- Journal: over random writes (appends, compactions), a folded journal is the last state, and
  a journal cut anywhere in its last line (a kill -9 mid-append) folds to the state before.
- The agent (FakeDataplane, ports a host process holds): after every reconcile of a random
  edit sequence, its report's entries, tally and counts equal those computed from all the
  reconcile's outcomes, and the state file and journal fold to that same report.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeport.adapters import statefile
from bridgeport.core import firstseen, settle, specs
from bridgeport.core.ledger import Ledger
from bridgeport.core.plan import State
from bridgeport.core.report import Entry, Report, tally
from bridgeport.core.specs import PORT_PUBLICATION, ResourceRef
from tests.agent.test_agent import HeldPorts, ListSource, agent_for, fake_node
from tests.core.parsed import net, pub

REFS = [ResourceRef(PORT_PUBLICATION, "ns", f"p{i}") for i in range(8)]
entries = st.builds(
    Entry,
    node=st.just("n"),
    ref=st.sampled_from(REFS),
    uid=st.sampled_from(["u1", "u2"]),
    observed_generation=st.integers(1, 3),
    state=st.sampled_from([s.value for s in State]),
    reason=st.sampled_from(["", "Programmed", "PortInUse", "IPv6Disabled", "NodeSelectorMismatch"]),
    message=st.sampled_from(["", "m"]),
    proxy=st.sampled_from(["off", "listening", "failed"]),
)
ops = st.one_of(
    st.tuples(st.just("put"), entries),
    st.tuples(st.just("drop"), st.sampled_from(REFS)),
    st.tuples(st.just("reset"), st.lists(entries, max_size=6)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=40))
def test_ledger_equals_the_full_tally(steps: list[Any]) -> None:
    ledger = Ledger()
    model: dict[ResourceRef, Entry] = {}
    replayed: dict[ResourceRef, Entry] = {}
    for kind, arg in steps:
        if kind == "put":
            ledger.put(arg)
            model[arg.ref] = arg
        elif kind == "drop":
            ledger.drop(arg)
            model.pop(arg, None)
        else:
            ledger.reset(arg)
            model = {e.ref: e for e in arg}
        changes = ledger.take_changes()
        if changes is None:
            replayed = dict(ledger.entries)
        else:
            for ref, e in changes.items():
                if e is None:
                    replayed.pop(ref, None)
                else:
                    replayed[ref] = e
        assert ledger.entries == model == replayed
        assert ledger.tally() == tally(model[r] for r in sorted(model))
        counts = {s.value: 0 for s in State}
        for e in model.values():
            counts[e.state] += 1
        assert ledger.counts() == counts
        assert ledger.applied == {r for r, e in model.items() if e.applied}


def _doc(name: str, port: int, created: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if created:
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"hostPort": port, "target": {"address": "10.0.0.2", "port": 80}}
    if port == 8003:
        del spec["hostPort"]  # the node assigns one
    return {
        "apiVersion": specs.API_VERSION,
        "kind": PORT_PUBLICATION,
        "metadata": meta,
        "spec": spec,
    }


stamp_edits = st.lists(
    st.tuples(
        st.sampled_from([f"p{i}" for i in range(6)]),
        st.integers(8000, 8003) | st.none(),
        st.booleans(),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["ResourcePublication//p0", "PortPublication/ns/p1", "PortPublication/ns/p9"]
        ),
        st.just("t0"),
    ),
    st.lists(stamp_edits, min_size=1, max_size=8),
)
def test_stamper_equals_stamp(remembered: dict[str, str], rounds: list[Any]) -> None:
    stamper = firstseen.Stamper(remembered)
    first_seen = dict(remembered)
    parsed: dict[str, Any] = {}
    for n, edits in enumerate(rounds):
        for name, port, created in edits:
            if port is None:
                parsed.pop(name, None)
            else:  # a new object, as a source makes for a changed resource
                parsed[name] = specs.parse(_doc(name, port, created))
        resources = [parsed[k] for k in sorted(parsed)]
        want, first_seen = firstseen.stamp(resources, first_seen, f"t{n + 1}")
        assert list(stamper.stamp(resources, f"t{n + 1}")) == want
        assert stamper.first_seen == first_seen
        assert stamper.assigning == sum(r.assign is not None for r in resources)
    assert stamper.assigning >= 0


journal_ops = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(REFS), entries | st.none(), max_size=3),
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]), st.sampled_from(["t1", "t2"]) | st.none(), max_size=2
        ),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(journal_ops, st.integers(0, 400))
def test_journal_folds_to_the_last_state(writes: list[Any], cut: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json.journal"
        journal = statefile.Journal(path)
        journal.SLACK = 300  # compactions every few writes
        docs: dict[tuple[str, str, str], dict[str, Any]] = {}
        seen: dict[str, str] = {}
        by_lines: dict[int, tuple[Any, Any]] = {}  # the state when the file had n lines
        for changed, times, everything in writes:
            line: dict[str, Any] = {}
            for ref, e in changed.items():
                if e is None:
                    docs.pop(tuple(ref), None)  # type: ignore[arg-type]
                    line.setdefault("gone", []).append(list(ref))
                else:
                    doc = {**e.document(), "name": ref.name}
                    docs[tuple(ref)] = doc  # type: ignore[index]
                    line.setdefault("entries", []).append(doc)
            for k, v in times.items():
                if v is None:
                    seen.pop(k, None)
                    line.setdefault("forgotten", []).append(k)
                else:
                    seen[k] = v
                    line.setdefault("firstSeen", {})[k] = v
            journal.write(
                line or None,
                lambda: {"entries": list(docs.values()), "firstSeen": dict(seen)},
                everything=everything,
            )
            assert statefile.read_journal(path) == (docs, seen)
            by_lines[len(path.read_text().splitlines())] = (dict(docs), dict(seen))
        text = path.read_text()
        last = text.rstrip("\n").rfind("\n") + 1  # where the last line starts
        if last and not json.loads(text[last:]).get("full"):
            # Cut inside it: at least its closing brace is missing (a line complete but for
            # its newline is whole, and counts).
            path.write_text(text[: last + cut % (len(text) - last - 1)])
            assert statefile.read_journal(path) == by_lines[text.count("\n") - 1]


publications = st.tuples(
    st.sampled_from([f"p{i}" for i in range(6)]),
    st.sampled_from([8080, 8081, 8082, 9000]) | st.none(),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(publications, min_size=1, max_size=3), min_size=1, max_size=10),
    st.sets(st.sampled_from([8081, 9000]), max_size=1),
)
def test_the_agents_reports_equal_the_full_computation(rounds: list[Any], held: set[int]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        current: dict[str, Any] = {}
        source = ListSource(net("a", "10.1.0.0/24"))
        seen: list[Report] = []

        async def record(report: Report) -> None:
            seen.append(report)

        fake = fake_node()
        proxies = HeldPorts(held, fake)
        agent = agent_for(source, fake, proxies=proxies, state_file=state, reporters=[record])

        async def body() -> None:
            for edits in rounds:
                for name, port in edits:
                    if port is None:
                        current.pop(name, None)
                    else:
                        current[name] = pub(name, port)
                source.resources = [net("a", "10.1.0.0/24"), *current.values()]
                done = await agent.reconcile()
                assert done is not None
                published = seen[-1]
                full = sorted(
                    (
                        Entry(
                            "node-1",
                            o.ref,
                            o.uid,
                            o.generation,
                            o.state.value,
                            o.reason,
                            o.message,
                            proxy=done.proxy_states.get(o.ref, "off"),
                        )
                        for o in done.outcomes
                    ),
                    key=lambda e: e.ref,
                )
                assert sorted(published.entries, key=lambda e: e.ref) == full
                # Read from the failures and listeners alone: as from every socket's status.
                claimed = {c.key for c in proxies.claimed[-1]}
                assert done.proxy_states == settle.proxy_states(
                    s for k, s in proxies.last.items() if k not in claimed or s.state == "failed"
                )
                assert published.tallied == tally(full)
                assert {
                    k: v
                    for k, v in published.counts.items()
                    if k in State.__members__ or k in {s.value for s in State}
                } == done.plan.counts()
                assert (
                    published.status()
                    == Report(
                        **{**published.__dict__, "entries": tuple(full), "tallied": None}
                    ).status()
                )
                loaded = statefile.load(state)
                assert loaded is not None
                assert loaded["resources"] == [e.document() for e in full]
                head = json.loads(state.read_text())
                assert head.pop("journal")["bytes"] == len(
                    statefile.journal_path(state).read_bytes()
                )
                assert head == published.head()

        asyncio.run(body())


def test_a_large_nodes_heap_is_frozen_until_the_next_full_plan() -> None:
    import gc

    from bridgeport.agent import FREEZE_AT, _freeze_heap

    try:
        assert _freeze_heap(FREEZE_AT, frozen=False)
        assert gc.get_freeze_count() > 0  # out of the cyclic collector's walks
        assert _freeze_heap(FREEZE_AT, frozen=True)  # the next full plan: anew
        assert not _freeze_heap(FREEZE_AT - 1, frozen=True)  # a small node: nothing frozen
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_what_a_restarted_agent_remembers(tmp_path: Path) -> None:
    """Incumbency and first-seen times come from the journal; a state file whose journal
    is gone lists only exceptions, so it proves no incumbency; an earlier version's state
    file has every entry."""
    from bridgeport.agent import _remembered

    state = tmp_path / "state.json"
    applied = Entry("n", REFS[0], "u1", 1, State.APPLIED.value)
    journal = statefile.Journal(statefile.journal_path(state))
    journal.write(None, lambda: {"entries": [applied.document()], "firstSeen": {"k": "t"}})
    state.write_text(json.dumps({"resources": [], "journal": journal.position()}))
    assert _remembered(state)[:2] == ({"k": "t"}, frozenset({REFS[0]}))
    statefile.journal_path(state).unlink()
    assert _remembered(state)[:2] == ({}, None)  # the kernel's bridges decide
    state.write_text(json.dumps({"resources": [applied.document()], "firstSeen": {"k": "t"}}))
    assert _remembered(state)[:2] == ({"k": "t"}, frozenset({REFS[0]}))
