"""Planning and rendering in O(change): a cache around the pure full planner (pure).

`IncrementalPlanner.plan(resources, facts)` always equals `planner.plan(resources, facts)`
(a hypothesis property says so); it only computes less. Publications interact only through
their port claims, so they fall into port groups: publications of one protocol whose port
ranges touch (one union-find over (protocol, port)). When only publications changed, the
groups they left or joined are replanned by the full planner, on those publications plus every
other resource, and their results replace the cached ones. Node facts that resources name
(incumbency, local addresses, interfaces that are not ours) move only the publications naming
them. Anything else (other node facts, networks, invalid or duplicate documents) replans the
node in full. Groups only ever merge between full plans: a group larger than needed costs
time, never correctness.

`IncrementalRenderer` patches the previous tables' map elements with the DNATs that left and
joined (and counts the loop ports, merging again only the port ranges a change touches), and
renders in full whenever bridges or source allowlists changed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bridgeport.core import planner, ruleset
from bridgeport.core.plan import Claim, Dnat, NodeFacts, NodePlan, Outcome, ProxyPort
from bridgeport.core.sockets import SocketChanges
from bridgeport.core.source import Moved
from bridgeport.core.specs import (
    BRIDGE_NETWORK,
    PORT_PUBLICATION,
    BridgeNetwork,
    InvalidResource,
    ParseResult,
    PortPublication,
    Protocol,
    ResourceRef,
)

Slot = tuple[str, int]  # (protocol, port)
# Node facts whose change moves only the resources naming them (IncrementalPlanner._facts_moved).
_NAMED_FACTS = ("incumbents", "addresses", "foreign_interfaces")


@dataclass(frozen=True)
class Delta:
    """What one incremental plan changed; None from `plan` means a full plan was made."""

    before: NodePlan  # the plan this one was derived from
    removed: tuple[Dnat, ...]
    added: tuple[Dnat, ...]
    sources_changed: bool = False  # spec.allowedSources rules moved: render in full
    refs: frozenset[ResourceRef] = frozenset()  # whose outcome may have changed
    sockets_changed: bool = True  # proxy listeners or port claims changed
    proxies_removed: tuple[ProxyPort, ...] = ()
    proxies_added: tuple[ProxyPort, ...] = ()
    claims_removed: tuple[Claim, ...] = ()
    claims_added: tuple[Claim, ...] = ()

    def sockets(self) -> SocketChanges:
        """How the plan's listeners and claims changed from `before`'s."""
        return SocketChanges(
            self.proxies_removed, self.proxies_added, self.claims_removed, self.claims_added
        )


class _Groups:
    """Union-find over (protocol, port) slots; a publication's group is its first slot's."""

    def __init__(self) -> None:
        self.parent: dict[Slot, Slot] = {}
        self.members: dict[Slot, set[ResourceRef]] = {}

    def find(self, slot: Slot) -> Slot:
        parent = self.parent.setdefault(slot, slot)
        if parent != slot:
            parent = self.parent[slot] = self.find(parent)
        return parent

    def join(self, pub: PortPublication) -> Slot:
        proto = pub.protocol.value
        root = self.find((proto, pub.host_port))
        for port in range(pub.host_port + 1, pub.host_port_end + 1):
            other = self.find((proto, port))
            if other != root:
                self.parent[other] = root
                self.members.setdefault(root, set()).update(self.members.pop(other, set()))
        self.members.setdefault(root, set()).add(pub.meta.ref)
        return root

    def leave(self, pub: PortPublication) -> Slot:
        root = self.find((pub.protocol.value, pub.host_port))
        self.members.get(root, set()).discard(pub.meta.ref)
        return root


class _Sorted:
    """A list kept in the order the full planner sorts it, with O(log n) lookups."""

    def __init__(self, key: Callable[[Any], Any], items: Sequence[Any] = ()) -> None:
        self.key = key
        self.items = sorted(items, key=key)
        self.keys = [key(i) for i in self.items]

    def add(self, item: Any) -> None:
        k = self.key(item)
        i = bisect.bisect_right(self.keys, k)
        self.keys.insert(i, k)
        self.items.insert(i, item)

    def remove(self, item: Any) -> None:
        k = self.key(item)
        i = bisect.bisect_left(self.keys, k)
        while self.items[i] != item:
            i += 1
        del self.keys[i], self.items[i]


def _proxy_order(p: ProxyPort) -> Any:
    return (p.key, (p.target.version, int(p.target)))


def _outcome_order(o: Outcome) -> ResourceRef:
    return o.ref


def _claim_order(c: Claim) -> Any:
    return c.key


class IncrementalPlanner:
    def __init__(self) -> None:
        self._facts: NodeFacts | None = None
        self._others: tuple[ParseResult, ...] = ()
        self._pubs: dict[ResourceRef, PortPublication] = {}
        self._groups = _Groups()
        self._dnats: dict[ResourceRef, tuple[Dnat, ...]] = {}
        self._proxies: dict[ResourceRef, tuple[ProxyPort, ...]] = {}
        self._outcomes: dict[ResourceRef, Outcome] = {}
        self._base: NodePlan | None = None  # the last plan: bridges, errors, network outcomes
        self._sorted_dnats = _Sorted(planner._dnat_order)
        self._sorted_proxies = _Sorted(_proxy_order)
        self._sorted_outcomes = _Sorted(_outcome_order)
        self._claims: dict[ResourceRef, tuple[Claim, ...]] = {}
        self._sorted_claims = _Sorted(_claim_order)
        self._sources: dict[ResourceRef, tuple[Any, ...]] = {}
        self._verdicts = planner.PortVerdicts()
        self.delta: Delta | None = None  # of the last plan; None when it was a full plan
        self._ids: dict[int, ParseResult] | None = None  # the last resources, by id()
        self._input: Sequence[ParseResult] | None = None  # the last resources
        self._other_refs: set[ResourceRef | None] = set()
        self._defined_twice = False
        self._assigning = False  # a publication assigns its host port: no id fast path

    def plan(
        self, resources: Sequence[ParseResult], facts: NodeFacts, moved: Moved | None = None
    ) -> NodePlan:
        """`moved`, when given, says which objects went and came since `moved.before`: used
        when that was the last call's `resources`, instead of comparing all of them."""
        try:
            return self._plan(resources, facts, moved)
        except BaseException:
            self._ids = self._input = self._base = None  # state unknown: plan in full next
            raise

    def _plan(
        self, resources: Sequence[ParseResult], facts: NodeFacts, moved: Moved | None
    ) -> NodePlan:
        # Sources hand out unchanged resources as the same objects: what changed are the
        # objects not seen last time (C-level set operations on their ids, no Python loop
        # over every resource; none at all when told). Not with publications that assign
        # their host ports: those ports depend on every publication (the full comparison).
        went: list[ParseResult] = []
        came: list[ParseResult] = []
        seen = self._ids is not None
        if moved is not None and self._ids is not None and moved.before is self._input:
            by_id = self._ids  # brought up to date in O(change)
            for r in moved.went:
                del by_id[id(r)]
            went += moved.went
            for r in moved.came:
                by_id[id(r)] = r
            came += moved.came
        else:
            by_id = dict(zip(map(id, resources), resources, strict=True))
            if self._ids is not None:
                went += [self._ids[i] for i in self._ids.keys() - by_id.keys()]
                came += [by_id[i] for i in by_id.keys() - self._ids.keys()]
        self._ids, self._input = by_id, resources
        plain = replace(facts, assigned=None, listening={}, remembered={}, avoid={})
        promoted = self._facts_moved(plain)
        if (
            self._base is not None
            and seen
            and promoted is not None
            and not self._defined_twice
            and not self._assigning
        ):
            changed_pubs = self._changed_publications(went, came)
            if changed_pubs is not None:
                for ref in promoted:  # replan its port group under the new facts
                    changed_pubs.setdefault(ref, self._pubs.get(ref))
                self._facts = plain
                return self._partial(changed_pubs, replace(plain, assigned={}))
        # Assigned host ports depend on every publication: allocate once, for all, and plan
        # with the publications resolved to their ports (a new port is a changed publication).
        facts = replace(plain, assigned=planner.allocate_ports(resources, facts, self._verdicts))
        pubs: dict[ResourceRef, PortPublication] = {}
        others: list[ParseResult] = []
        for res in resources:
            if isinstance(res, PortPublication) and res.meta.ref not in pubs:
                pubs[res.meta.ref] = planner.resolved(res, facts) if res.assign else res
            else:
                others.append(res)
        others_t = tuple(sorted(others, key=_doc_order))
        if (
            self._base is None
            or promoted is None
            or others_t != self._others
            or any(_ref(o) in pubs for o in others_t)
        ):  # defined more than once
            return self._full(resources, facts, pubs, others_t)
        prev = self._pubs
        changed = {
            ref: old
            for ref, pub in pubs.items()
            if (old := prev.get(ref)) is not pub and old != pub
        }
        changed.update((ref, prev[ref]) for ref in prev.keys() - pubs.keys())
        for ref in promoted:
            changed.setdefault(ref, prev.get(ref))
        self._facts = plain
        if any(ref in self._other_refs for ref in changed):  # was defined more than once
            return self._full(resources, facts, pubs, others_t)
        self._pubs = pubs
        self._assigning = any(p.assign is not None for p in pubs.values())
        return self._partial(changed, facts)

    def _facts_moved(self, facts: NodeFacts) -> set[ResourceRef] | None:
        """The publications a change of node facts can move, when only facts that resources
        name changed; None when others did (a full plan). Incumbency (a publication newly
        Applied, or no longer) moves its port group if contested; a network's nothing, while
        the networks keep their outcomes (else a full plan). Local addresses move the
        publications on a changed hostIP. Interfaces that are not ours come and go with every
        container's veth: they move nothing unless a network asks for one's name."""
        prev = self._facts
        if prev is None:
            return None
        if facts == prev:
            return set()
        if replace(facts, **{f: getattr(prev, f) for f in _NAMED_FACTS}) != prev:
            return None
        moved = set(facts.incumbents ^ prev.incumbents)
        if any(r.kind != PORT_PUBLICATION for r in moved) and not self._networks_hold(facts):
            return None
        moved = {ref for ref in moved if ref.kind == PORT_PUBLICATION and self._contested(ref)}
        names = facts.foreign_interfaces ^ prev.foreign_interfaces
        addresses = facts.addresses ^ prev.addresses
        for other in self._others:
            if isinstance(other, BridgeNetwork) and (
                other.bridge in names
                or {other.host_binding, other.egress_address, other.egress_address6} & addresses
            ):
                return None
        if addresses:
            moved.update(r for r, p in self._pubs.items() if p.specific_host_ip in addresses)
        return moved

    def _networks_hold(self, facts: NodeFacts) -> bool:
        """Whether the networks keep their outcomes under these facts (a network's
        incumbency only ranks networks that conflict: one newly Applied, as at every start,
        changes nothing else). Then what publications see of them is unchanged too."""
        refs = [_ref(o) for o in self._others]
        if len(set(refs)) != len(refs):
            return False  # a network defined more than once: plan() chooses
        networks = [o for o in self._others if isinstance(o, BridgeNetwork)]
        outcomes = planner.network_outcomes(networks, facts)
        return all(self._outcomes.get(ref) == o for ref, o in outcomes.items())

    def _contested(self, ref: ResourceRef) -> bool:
        """Whether `ref` shares its port group: incumbency only ranks the claimants of one
        group, so a publication alone in its group keeps its outcome whatever its incumbency
        (after a load of 10,000, every one of them turns incumbent at once). A publication
        that joins the group in this change is replanned with it anyway."""
        pub = self._pubs.get(ref)
        if pub is None:
            return True
        root = self._groups.find((pub.protocol.value, pub.host_port))
        return len(self._groups.members.get(root, ())) > 1

    def _changed_publications(
        self, gone: list[ParseResult], new: list[ParseResult]
    ) -> dict[ResourceRef, PortPublication | None] | None:
        """Bring the publications up to date from the objects that went and came; the
        changed ones with their old versions. None when that does not do: a change to
        anything but a valid publication, or a duplicate (the full comparison decides)."""
        if not all(isinstance(r, PortPublication) for r in (*gone, *new)):
            return None
        pubs = self._pubs
        went = {r.meta.ref: r for r in gone}  # type: ignore[union-attr]
        if (
            len(went) != len(gone)
            or any(pubs.get(ref) is not r for ref, r in went.items())
            or any(ref in self._other_refs for ref in went)
        ):
            return None  # one of them was or is defined more than once
        came: dict[ResourceRef, PortPublication] = {}
        for r in new:
            assert isinstance(r, PortPublication)
            if r.assign is not None:
                return None  # its port depends on every publication
            ref = r.meta.ref
            if ref in came or (ref in pubs and ref not in went) or ref in self._other_refs:
                return None  # a duplicate now
            came[ref] = r
        old: dict[ResourceRef, PortPublication | None] = {}
        for ref in went.keys() | came.keys():
            before, after = pubs.get(ref), came.get(ref)
            if after is None:
                del pubs[ref]
            else:
                pubs[ref] = after
            if before != after:
                old[ref] = before
        return old

    def networks(self) -> set[str]:
        """Every BridgeNetwork among the last plan's resources, valid or not."""
        names = set()
        for r in self._others:
            ref = r.ref if isinstance(r, InvalidResource) else r.meta.ref
            if ref is not None and ref.kind == BRIDGE_NETWORK:
                names.add(ref.name)
        return names

    def outcome(self, ref: ResourceRef) -> Outcome | None:
        """The last plan's outcome for `ref`, in O(1)."""
        return self._outcomes.get(ref)

    def _full(
        self,
        resources: Sequence[ParseResult],
        facts: NodeFacts,
        pubs: dict[ResourceRef, PortPublication],
        others: tuple[ParseResult, ...],
    ) -> NodePlan:
        result = planner.plan(resources, facts)
        self._facts, self._others, self._pubs = replace(facts, assigned=None), others, pubs
        self._other_refs = {_ref(o) for o in others}
        # A publication defined more than once: every plan is a full one until it is not.
        self._defined_twice = any(ref in pubs for ref in self._other_refs)
        self._assigning = any(p.assign is not None for p in pubs.values())
        self._groups = _Groups()
        for pub in pubs.values():
            self._groups.join(pub)
        self._dnats, self._proxies = _by_owner(result.dnats), _by_owner(result.proxies)
        self._outcomes = {o.ref: o for o in result.outcomes}
        self._sorted_dnats = _Sorted(planner._dnat_order, result.dnats)
        self._sorted_proxies = _Sorted(_proxy_order, result.proxies)
        self._sorted_outcomes = _Sorted(_outcome_order, result.outcomes)
        self._claims = _by_owner(result.claims)
        self._sorted_claims = _Sorted(_claim_order, result.claims)
        self._sources = _by_owner(result.source_rules)
        self._base = result
        self.delta = None
        return result

    def _partial(
        self, changed: dict[ResourceRef, PortPublication | None], facts: NodeFacts
    ) -> NodePlan:
        """Replan the port groups of the changed publications (`changed`: their versions
        before; self._pubs holds the current ones)."""
        assert self._base is not None
        before_plan = self._base
        pubs = self._pubs
        roots: set[Slot] = set()
        for old in changed.values():
            if old is not None:
                roots.add(self._groups.leave(old))
        for ref in changed:
            new = pubs.get(ref)
            if new is not None:
                roots.add(self._groups.join(new))
        roots = {self._groups.find(r) for r in roots}
        members = set().union(*(self._groups.members.get(r, set()) for r in roots))
        members |= set(changed)
        sub = planner.plan([*self._others, *(pubs[r] for r in members if r in pubs)], facts)
        removed: list[Dnat] = []
        added: list[Dnat] = []
        p_removed: list[ProxyPort] = []
        p_added: list[ProxyPort] = []
        c_removed: list[Claim] = []
        c_added: list[Claim] = []
        new_dnats, new_proxies = _by_owner(sub.dnats), _by_owner(sub.proxies)
        new_claims, new_sources = _by_owner(sub.claims), _by_owner(sub.source_rules)
        sources_changed = sockets_changed = False
        new_outcomes = {o.ref: o for o in sub.outcomes}
        for ref in members:
            before, after = self._dnats.pop(ref, ()), new_dnats.get(ref, ())
            if before != after:
                for d in before:
                    self._sorted_dnats.remove(d)
                for d in after:
                    self._sorted_dnats.add(d)
                removed += before
                added += after
            if after:
                self._dnats[ref] = after
            p_before, p_after = self._proxies.pop(ref, ()), new_proxies.get(ref, ())
            if p_before != p_after:
                sockets_changed = True
                p_removed += p_before
                p_added += p_after
                for p in p_before:
                    self._sorted_proxies.remove(p)
                for p in p_after:
                    self._sorted_proxies.add(p)
            if p_after:
                self._proxies[ref] = p_after
            o_before, o_after = self._outcomes.pop(ref, None), new_outcomes.get(ref)
            if o_before != o_after:
                if o_before is not None:
                    self._sorted_outcomes.remove(o_before)
                if o_after is not None:
                    self._sorted_outcomes.add(o_after)
            if o_after is not None:
                self._outcomes[ref] = o_after
            c_before, c_after = self._claims.pop(ref, ()), new_claims.get(ref, ())
            if c_before != c_after:
                sockets_changed = True
                c_removed += c_before
                c_added += c_after
                for c in c_before:
                    self._sorted_claims.remove(c)
                for c in c_after:
                    self._sorted_claims.add(c)
            if c_after:
                self._claims[ref] = c_after
            s_before, s_after = self._sources.pop(ref, ()), new_sources.get(ref, ())
            sources_changed |= s_before != s_after
            if s_after:
                self._sources[ref] = s_after
        self.delta = Delta(
            before_plan,
            tuple(removed),
            tuple(added),
            sources_changed,
            frozenset(members),
            sockets_changed,
            tuple(p_removed),
            tuple(p_added),
            tuple(c_removed),
            tuple(c_added),
        )
        # The planner lists source rules in the order it plans publications: incumbents
        # first, then the oldest.
        owners = sorted(
            self._sources, key=lambda r: (r not in facts.incumbents, self._pubs[r].meta.age_key)
        )
        self._base = replace(
            self._base,
            dnats=tuple(self._sorted_dnats.items),
            proxies=tuple(self._sorted_proxies.items),
            claims=tuple(self._sorted_claims.items),
            source_rules=tuple(x for r in owners for x in self._sources[r]),
            outcomes=tuple(self._sorted_outcomes.items),
        )
        return self._base


def _by_owner(items: Sequence[Any]) -> dict[ResourceRef, tuple[Any, ...]]:
    out: dict[ResourceRef, list[Any]] = {}
    for i in items:
        out.setdefault(i.owner, []).append(i)
    return {k: tuple(v) for k, v in out.items()}


def _ref(res: ParseResult) -> ResourceRef | None:
    return res.ref if isinstance(res, InvalidResource) else res.meta.ref


def _doc_order(res: ParseResult) -> tuple[str, str]:
    if isinstance(res, InvalidResource):
        return ("1", str(res.ref) + res.message)
    return ("0", str(res.meta.ref) + repr(res))


class _LoopPorts:
    """The loop-port sets kept as ports come and go: single ports counted (two publications
    may share one), ranges merged as `ruleset` merges them, where only the merged intervals
    a changed range touches are merged again."""

    def __init__(self, plan: NodePlan) -> None:
        published = _spans(plan.dnats, plan.proxies)
        self.singles = Counter((proto, lo) for proto, lo, hi in published if lo == hi)
        self.spans: dict[Protocol, list[tuple[int, int]]] = {}  # sorted, with repeats
        self.merged: dict[Protocol, list[tuple[int, int]]] = {}  # sorted, disjoint
        for proto, lo, hi in published:
            if lo != hi:
                self.spans.setdefault(proto, []).append((lo, hi))
        for proto, spans in self.spans.items():
            spans.sort()
            self.merged[proto] = ruleset.merge_spans(spans)

    def update(
        self, removed: list[tuple[Protocol, int, int]], added: list[tuple[Protocol, int, int]]
    ) -> dict[str, tuple[set[ruleset.Element], set[ruleset.Element]]]:
        """Apply the spans that left and came; per set, the elements that left and came."""
        out: dict[str, tuple[set[ruleset.Element], set[ruleset.Element]]] = {}
        singles = self.singles
        for sign, changed in ((-1, removed), (1, added)):
            for proto, lo, hi in changed:
                if lo != hi:
                    continue
                before = singles[proto, lo]
                singles[proto, lo] = after = before + sign
                if not after:
                    del singles[proto, lo]
                if (before > 0) != (after > 0):  # it came or went: one element
                    gone, new = out.setdefault(ruleset.LOOP_PORTS, (set(), set()))
                    e = ruleset.loop_element(proto, lo, lo)
                    (new if after else gone).add(e)
        if ruleset.LOOP_PORTS in out:  # a port that went and came back in one delta
            gone, new = out[ruleset.LOOP_PORTS]
            both = gone & new
            gone -= both
            new -= both
            if not gone and not new:
                del out[ruleset.LOOP_PORTS]
        ranges = self._ranges(
            [x for x in removed if x[1] != x[2]], [x for x in added if x[1] != x[2]]
        )
        if ranges[0] or ranges[1]:
            out[ruleset.LOOP_RANGES] = ranges
        return out

    def _ranges(
        self, removed: list[tuple[Protocol, int, int]], added: list[tuple[Protocol, int, int]]
    ) -> tuple[set[ruleset.Element], set[ruleset.Element]]:
        gone: set[ruleset.Element] = set()
        new: set[ruleset.Element] = set()
        for proto in {p for p, _, _ in removed} | {p for p, _, _ in added}:
            spans = self.spans.setdefault(proto, [])
            merged = self.merged.setdefault(proto, [])
            touched_spans = [(lo, hi) for p, lo, hi in (*removed, *added) if p == proto]
            touched: set[tuple[int, int]] = set()
            for lo, hi in touched_spans:  # old merged intervals a changed span overlaps
                i = bisect.bisect_left(merged, (lo + 1,)) - 1  # the last one starting <= lo
                i = max(i, 0)
                while i < len(merged) and merged[i][0] <= hi:
                    if merged[i][1] >= lo:
                        touched.add(merged[i])
                    i += 1
            for p, lo, hi in removed:
                if p == proto:
                    del spans[bisect.bisect_left(spans, (lo, hi))]
            for p, lo, hi in added:
                if p == proto:
                    bisect.insort(spans, (lo, hi))
            # Every span of a touched interval starts inside it; the added ones may not.
            collect = {(lo, hi) for p, lo, hi in added if p == proto}
            for lo, hi in touched:
                a, b = bisect.bisect_left(spans, (lo,)), bisect.bisect_right(spans, (hi + 1,))
                collect.update(spans[a:b])
            remade = ruleset.merge_spans(sorted(collect))
            for interval in touched:
                del merged[bisect.bisect_left(merged, interval)]
            for interval in remade:
                bisect.insort(merged, interval)
            before, after = set(touched), set(remade)
            gone |= {ruleset.loop_element(proto, lo, hi) for lo, hi in before - after}
            new |= {ruleset.loop_element(proto, lo, hi) for lo, hi in after - before}
        return gone, new


def _spans(dnats: Sequence[Dnat], proxies: Sequence[ProxyPort]) -> list[tuple[Protocol, int, int]]:
    return [
        *((d.protocol, d.port, d.port_end) for d in dnats),
        *((p.protocol, p.port, p.port) for p in proxies),
    ]


class IncrementalRenderer:
    """`render(plan, delta)` equals `ruleset.render(plan)`; with a delta it only patches,
    and `digest()` equals `ruleset.digest` of the tables, kept per set in O(change)."""

    def __init__(self, counters: bool = True) -> None:
        self.counters = counters  # per-publication counters (cnt_* mirrors of the pub_* maps)
        self._plan: NodePlan | None = None
        self._tables: tuple[ruleset.Table, ruleset.Table] | None = None
        self._loop: _LoopPorts | None = None
        self._digests: dict[tuple[str, str], int] = {}

    def render(self, plan: NodePlan, delta: Delta | None) -> tuple[ruleset.Table, ruleset.Table]:
        prev = self._plan
        tables: tuple[ruleset.Table, ruleset.Table] | None = None
        if not (
            delta is None
            or prev is None
            or self._tables is None
            or self._loop is None
            or delta.sources_changed
            or delta.before is not prev
            or prev.bridges != plan.bridges
        ):
            loop = self._loop.update(
                _spans(delta.removed, delta.proxies_removed),
                _spans(delta.added, delta.proxies_added),
            )
            patched = (
                self._patch(self._tables[0], delta, 4, loop),
                self._patch(self._tables[1], delta, 6, loop),
            )
            if not (
                self.counters
                and any(  # the count chains look up only non-empty sets
                    bool(old.elements.get(name)) != bool(t.elements.get(name))
                    for old, t in zip(self._tables, patched, strict=True)
                    for name in ruleset.COUNT_SETS
                )
            ):
                tables = patched
        if tables is None:
            tables = ruleset.render(plan, counters=self.counters)
            self._loop = _LoopPorts(plan)
            digests: dict[int, int] = {}  # by set object: the tables share their loop ports
            self._digests = {}
            for t in tables:
                for s in t.lookups:
                    elements = t.elements.get(s.name, frozenset())
                    if id(elements) not in digests:
                        digests[id(elements)] = ruleset.elements_digest(elements)
                    self._digests[(t.family, s.name)] = digests[id(elements)]
        self._plan, self._tables = plan, tables
        return tables

    def digest(self) -> str:
        """`ruleset.digest` of the last tables."""
        assert self._tables is not None
        return ruleset.digest(self._tables, self._digests)

    def _patch(
        self,
        table: ruleset.Table,
        delta: Delta,
        version: int,
        loop: Mapping[str, tuple[set[ruleset.Element], set[ruleset.Element]]],
    ) -> ruleset.Table:
        gone: dict[str, set[ruleset.Element]] = {}
        new: dict[str, set[ruleset.Element]] = {}
        for changed, into in ((delta.removed, gone), (delta.added, new)):
            for d in changed:
                if d.family != version:
                    continue
                for name, e in ruleset.dnat_elements(d):
                    into.setdefault(name, set()).add(e)
                    if self.counters and name in ruleset.COUNTED:
                        into.setdefault("cnt" + name[3:], set()).add(
                            ruleset.Element(e.key, "", e.comment)
                        )
        for name, (out, came) in loop.items():  # every published port (both families)
            gone[name], new[name] = out, came
        elements = dict(table.elements)
        patched = False
        for name in gone.keys() | new.keys():
            before = elements.get(name, frozenset())
            # What really leaves and comes: an element both removed and added stays (an edit
            # that keeps a publication's counter element, or its loop port), and a set that
            # does not change keeps its object, so the diff skips it.
            came = {e for e in new.get(name, ()) if e not in before}
            out = {e for e in gone.get(name, ()) if e in before and e not in new.get(name, ())}
            if not out and not came:
                continue
            value = self._digests.get((table.family, name), 0)
            for e in (*out, *came):  # the digest follows what left and came: O(change)
                value ^= ruleset.element_hash(e)
            self._digests[(table.family, name)] = value
            # One copy of the set, not two, when elements only leave or only come.
            if not came:
                elements[name] = before.difference(out)
            elif not out:
                elements[name] = before.union(came)
            else:
                elements[name] = (before - out) | came
            patched = True
        if not patched:
            return table
        return replace(table, elements=elements)
