"""Planning and rendering in O(change): a cache around the pure full planner (pure).

`IncrementalPlanner.plan(resources, facts)` always equals `planner.plan(resources, facts)`
(a hypothesis property says so); it only computes less. Publications interact only through
their port claims, so they fall into port groups: publications of one protocol whose port
ranges touch (one union-find over (protocol, port)). When only publications changed, the
groups they left or joined are replanned by the full planner, on those publications plus every
other resource, and their results replace the cached ones. Anything else (node facts,
networks, invalid or duplicate documents) replans the node in full. Groups only ever merge
between full plans: a group larger than needed costs time, never correctness.

`IncrementalRenderer` patches the previous tables' map elements with the DNATs that left and
joined (and recomputes the merged loop-port set, a few ms), and renders in full whenever
bridges or source allowlists changed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bridgeport.core import planner, ruleset
from bridgeport.core.plan import Claim, Dnat, NodeFacts, NodePlan, Outcome, ProxyPort
from bridgeport.core.specs import (
    InvalidResource,
    ParseResult,
    PortPublication,
    ResourceRef,
)

Slot = tuple[str, int]  # (protocol, port)


@dataclass(frozen=True)
class Delta:
    """What one incremental plan changed; None from `plan` means a full plan was made."""

    before: NodePlan  # the plan this one was derived from
    removed: tuple[Dnat, ...]
    added: tuple[Dnat, ...]
    sources_changed: bool = False  # spec.allowedSources rules moved: render in full


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

    def plan(self, resources: Sequence[ParseResult], facts: NodeFacts) -> NodePlan:
        # Assigned host ports depend on every publication: allocate once, for all, and plan
        # with the publications resolved to their ports (a new port is a changed publication).
        facts = replace(facts, assigned=planner.allocate_ports(resources, facts, self._verdicts),
                        listening={}, remembered={}, avoid={})
        pubs: dict[ResourceRef, PortPublication] = {}
        others: list[ParseResult] = []
        for res in resources:
            if isinstance(res, PortPublication) and res.meta.ref not in pubs:
                pubs[res.meta.ref] = planner.resolved(res, facts) if res.assign else res
            else:
                others.append(res)
        others_t = tuple(sorted(others, key=_doc_order))
        if (self._base is None or replace(facts, assigned=None) != self._facts
                or others_t != self._others
                or any(not isinstance(o, InvalidResource) and o.meta.ref in pubs
                       for o in others_t)):
            return self._full(resources, facts, pubs, others_t)
        prev = self._pubs
        changed = [ref for ref, pub in pubs.items()
                   if (old := prev.get(ref)) is not pub and old != pub]
        changed += prev.keys() - pubs.keys()
        return self._partial(changed, pubs, facts)

    def _full(self, resources: Sequence[ParseResult], facts: NodeFacts,
              pubs: dict[ResourceRef, PortPublication], others: tuple[ParseResult, ...]
              ) -> NodePlan:
        result = planner.plan(resources, facts)
        self._facts, self._others, self._pubs = replace(facts, assigned=None), others, pubs
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

    def _partial(self, changed: list[ResourceRef], pubs: dict[ResourceRef, PortPublication],
                 facts: NodeFacts) -> NodePlan:
        assert self._base is not None
        before_plan = self._base
        roots: set[Slot] = set()
        for ref in changed:
            old = self._pubs.get(ref)
            if old is not None:
                roots.add(self._groups.leave(old))
        for ref in changed:
            new = pubs.get(ref)
            if new is not None:
                roots.add(self._groups.join(new))
        roots = {self._groups.find(r) for r in roots}
        members = set().union(*(self._groups.members.get(r, set()) for r in roots))
        members |= set(changed)
        self._pubs = pubs
        sub = planner.plan([*self._others, *(pubs[r] for r in members if r in pubs)], facts)
        removed: list[Dnat] = []
        added: list[Dnat] = []
        new_dnats, new_proxies = _by_owner(sub.dnats), _by_owner(sub.proxies)
        new_claims, new_sources = _by_owner(sub.claims), _by_owner(sub.source_rules)
        sources_changed = False
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
        self.delta = Delta(before_plan, tuple(removed), tuple(added), sources_changed)
        # The planner lists source rules in the order it plans publications: oldest first.
        owners = sorted(self._sources, key=lambda r: self._pubs[r].meta.age_key)
        self._base = replace(self._base, dnats=tuple(self._sorted_dnats.items),
                             proxies=tuple(self._sorted_proxies.items),
                             claims=tuple(self._sorted_claims.items),
                             source_rules=tuple(x for r in owners for x in self._sources[r]),
                             outcomes=tuple(self._sorted_outcomes.items))
        return self._base


def _by_owner(items: Sequence[Any]) -> dict[ResourceRef, tuple[Any, ...]]:
    out: dict[ResourceRef, list[Any]] = {}
    for i in items:
        out.setdefault(i.owner, []).append(i)
    return {k: tuple(v) for k, v in out.items()}


def _doc_order(res: ParseResult) -> tuple[str, str]:
    if isinstance(res, InvalidResource):
        return ("1", str(res.ref) + res.message)
    return ("0", str(res.meta.ref) + repr(res))


class IncrementalRenderer:
    """`render(plan, delta)` equals `ruleset.render(plan)`; with a delta it only patches."""

    def __init__(self, counters: bool = True) -> None:
        self.counters = counters  # per-publication counters (cnt_* mirrors of the pub_* maps)
        self._plan: NodePlan | None = None
        self._tables: tuple[ruleset.Table, ruleset.Table] | None = None

    def render(self, plan: NodePlan, delta: Delta | None
               ) -> tuple[ruleset.Table, ruleset.Table]:
        prev = self._plan
        if (delta is None or prev is None or self._tables is None or delta.sources_changed
                or delta.before is not prev or prev.bridges != plan.bridges):
            tables = ruleset.render(plan, counters=self.counters)
        else:
            loop = ruleset.loop_port_elements(plan)
            tables = (self._patch(self._tables[0], delta, 4, loop, self.counters),
                      self._patch(self._tables[1], delta, 6, loop, self.counters))
            if self.counters and any(  # the count chains look up only non-empty sets
                    bool(old.elements.get(name)) != bool(t.elements.get(name))
                    for old, t in zip(self._tables, tables, strict=True)
                    for name in ruleset.COUNT_SETS):
                tables = ruleset.render(plan, counters=True)
        self._plan, self._tables = plan, tables
        return tables

    @staticmethod
    def _patch(table: ruleset.Table, delta: Delta, version: int,
               loop: frozenset[ruleset.Element] | None, counters: bool) -> ruleset.Table:
        gone: dict[str, set[ruleset.Element]] = {}
        new: dict[str, set[ruleset.Element]] = {}
        for changed, into in ((delta.removed, gone), (delta.added, new)):
            for d in changed:
                if d.family != version:
                    continue
                for name, e in ruleset.dnat_elements(d):
                    into.setdefault(name, set()).add(e)
                    if counters and name in ruleset.COUNTED:
                        into.setdefault("cnt" + name[3:], set()).add(
                            ruleset.Element(e.key, "", e.comment))
        if not gone and not new and loop is None:
            return table
        elements = dict(table.elements)
        for name in gone.keys() | new.keys():
            elements[name] = (elements.get(name, frozenset()) - gone.get(name, set())
                              ) | new.get(name, set())
        if loop is not None:  # every published port range, merged: derived from all DNATs
            elements[ruleset.LOOP_PORTS] = loop
        return replace(table, elements=elements)
