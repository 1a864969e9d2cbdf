"""The controller's view of every node's report, kept per resource in O(change) (pure).

A node reports its exceptions as entries, the labels it matched nodeSelectors against, and
digests of what it applied (core/summary.py). For a node, the controller expects bucket b to
hold the XOR of every resource of b whose selector matches the node's labels and that the node
does not list, at the resource's current uid and generation. A bucket that matches proves each
of those resources Applied at its current generation on that node: exact, without an entry.

A bucket that does not match is explained by the resources of that bucket that changed in the
last WINDOW seconds (the candidates): the view searches which earlier generation (or none)
the node still has for each, so a node that lags one change shows exactly that resource as
pending. When no combination explains it (too many candidates, or a node stuck for longer
than the window), every resource of the bucket that selects the node counts as pending on
it until its report matches: never Ready without proof.

Reports without digests (agents of earlier versions) are taken entry by entry, as before.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridgeport.core import summary
from bridgeport.core.plan import State
from bridgeport.core.report import Entry, entries
from bridgeport.core.specs import NodeSelector, ResourceRef

WINDOW = 600.0  # seconds a change stays a candidate explanation of a node's mismatch
MAX_HISTORY = 4  # earlier incarnations/generations remembered per resource
MAX_SEARCH = 20_000  # explanations tried per mismatched bucket before giving up (pending)
PENDING_REASON = "ReportPending"

# A mismatched bucket's explanation: the candidates not at their current generation, each
# with the generation the node has (None: not applied); None when nothing explains it.
Solution = dict[ResourceRef, int | None] | None


@dataclass(frozen=True)
class Tracked:
    ref: ResourceRef
    uid: str
    generation: int
    selector: NodeSelector | None  # None: the spec does not parse (nodes report it Invalid)

    @functools.cached_property
    def item(self) -> int:
        return summary.item(self.ref, self.uid, self.generation)


@dataclass
class NodeView:
    labels: dict[str, str] | None  # None: an entry-per-resource report (no digests)
    listed: dict[ResourceRef, tuple[Entry, ...]]
    digests: tuple[int, ...] = ()
    selectors: set[NodeSelector] = field(default_factory=set)  # in use, matching labels
    solved: dict[int, Solution] = field(default_factory=dict)  # mismatched buckets only
    listed_buckets: dict[int, list[ResourceRef]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ref in self.listed:
            self.listed_buckets.setdefault(summary.bucket_of(ref), []).append(ref)

    @property
    def summarised(self) -> bool:
        return self.labels is not None


@dataclass
class _Recent:
    changed: float
    earlier: list[tuple[str, int]] = field(default_factory=list)  # (uid, generation)


def parse_node(
    node: str, status: Mapping[str, Any] | None
) -> tuple[dict[str, str] | None, dict[ResourceRef, tuple[Entry, ...]], tuple[int, ...] | None]:
    """(labels, listed entries, digests) of a NodeState's status; labels and digests are None
    for a report without a (valid) summary."""
    grouped: dict[ResourceRef, list[Entry]] = {}
    for r in entries(node, status):
        grouped.setdefault(r.ref, []).append(r)
    listed = {ref: tuple(rs) for ref, rs in grouped.items()}
    status = status or {}
    applied = status.get("applied")
    labels = status.get("labels")
    digests = summary.decode(applied.get("digest")) if isinstance(applied, Mapping) else None
    if digests is None or not isinstance(labels, Mapping):
        return None, listed, None
    return ({str(k): str(v) for k, v in labels.items() if isinstance(v, str)}, listed, digests)


class ClusterView:
    """Resources and node reports; every update returns the refs whose status may change.

    Updates only record what changed; `flush()` then re-checks the affected digests, once per
    batch (a relist of 10,000 resources and 1,000 nodes checks each bucket of each node once,
    not once per event). Call it before `inputs()`.
    """

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.tracked: dict[ResourceRef, Tracked] = {}
        self.nodes: dict[str, NodeView] = {}
        self._sel_refs: dict[NodeSelector, set[ResourceRef]] = {}
        self._sel_digest: dict[NodeSelector, list[int]] = {}
        self._sel_nodes: dict[NodeSelector, set[str]] = {}
        self._members: dict[int, set[ResourceRef]] = {}
        self._recent: dict[ResourceRef, _Recent] = {}
        self._recent_order: deque[tuple[float, ResourceRef]] = deque()
        self._recent_by_bucket: dict[int, set[ResourceRef]] = {}
        self._listed_by_ref: dict[ResourceRef, set[str]] = {}
        self._unresolved: dict[int, set[str]] = {}
        self._assigned: dict[ResourceRef, dict[str, int | None]] = {}
        self._summarised: set[str] = set()
        self._pending_buckets: set[int] = set()  # to re-check on every node
        self._pending_nodes: set[str] = set()  # to re-check in every bucket

    # resources ----------------------------------------------------------------------------

    def put_resource(self, new: Tracked, now: float) -> set[ResourceRef]:
        old = self.tracked.get(new.ref)
        if old == new:
            return set()
        self.expire(now)
        if old is not None:
            self._untrack(old)
        self._track(new)
        self._remember(new.ref, old, now)
        self._pending_buckets.add(summary.bucket_of(new.ref))
        return {new.ref}

    def drop_resource(self, ref: ResourceRef, now: float) -> set[ResourceRef]:
        old = self.tracked.get(ref)
        if old is None:
            return set()
        self.expire(now)
        self._untrack(old)
        self._remember(ref, old, now)
        self._pending_buckets.add(summary.bucket_of(ref))
        return {ref}

    def _track(self, t: Tracked) -> None:
        b = summary.bucket_of(t.ref)
        self.tracked[t.ref] = t
        self._members.setdefault(b, set()).add(t.ref)
        if t.selector is None:
            return
        if t.selector not in self._sel_refs:
            self._sel_refs[t.selector] = set()
            self._sel_digest[t.selector] = [0] * summary.BUCKETS
            matching = {
                n
                for n, v in self.nodes.items()
                if v.labels is not None and t.selector.matches(v.labels)
            }
            self._sel_nodes[t.selector] = matching
            for n in matching:
                self.nodes[n].selectors.add(t.selector)
        self._sel_refs[t.selector].add(t.ref)
        self._sel_digest[t.selector][b] ^= t.item

    def _untrack(self, t: Tracked) -> None:
        b = summary.bucket_of(t.ref)
        del self.tracked[t.ref]
        self._members[b].discard(t.ref)
        if t.selector is None:
            return
        self._sel_digest[t.selector][b] ^= t.item
        refs = self._sel_refs[t.selector]
        refs.discard(t.ref)
        if not refs:
            del self._sel_refs[t.selector], self._sel_digest[t.selector]
            for n in self._sel_nodes.pop(t.selector):
                self.nodes[n].selectors.discard(t.selector)

    def _remember(self, ref: ResourceRef, old: Tracked | None, now: float) -> None:
        recent = self._recent.setdefault(ref, _Recent(now))
        recent.changed = now
        if old is not None and (old.uid, old.generation) not in recent.earlier:
            recent.earlier = [(old.uid, old.generation), *recent.earlier][:MAX_HISTORY]
        self._recent_order.append((now, ref))
        self._recent_by_bucket.setdefault(summary.bucket_of(ref), set()).add(ref)

    def expire(self, now: float) -> None:
        """Forget changes older than the window (a node that still lags one is pending)."""
        while self._recent_order and self._recent_order[0][0] < now - self.window:
            at, ref = self._recent_order.popleft()
            recent = self._recent.get(ref)
            if recent is not None and recent.changed == at:
                del self._recent[ref]
                b = summary.bucket_of(ref)
                self._recent_by_bucket[b].discard(ref)
                self._pending_buckets.add(b)

    @property
    def pending(self) -> bool:
        """Whether updates wait for flush() (a report whose digests changed, and nothing
        else, marks no ref dirty until then)."""
        return bool(self._pending_buckets or self._pending_nodes)

    def flush(self) -> set[ResourceRef]:
        """Re-check what changed since the last flush; the refs whose verdicts moved."""
        dirty: set[ResourceRef] = set()
        buckets, self._pending_buckets = self._pending_buckets, set()
        nodes, self._pending_nodes = self._pending_nodes, set()
        for name in nodes:
            node = self.nodes.get(name)
            if node is not None and node.summarised:
                for b in range(summary.BUCKETS):
                    if b not in buckets:
                        dirty |= self._recheck(name, node, b)
        for b in buckets:
            for name, node in self.nodes.items():
                if node.summarised:
                    dirty |= self._recheck(name, node, b)
        return dirty

    # nodes --------------------------------------------------------------------------------

    def put_node(self, name: str, status: Mapping[str, Any] | None) -> set[ResourceRef]:
        labels, listed, digests = parse_node(name, status)
        return self._replace_node(name, NodeView(labels, listed, digests or ()))

    def drop_node(self, name: str) -> set[ResourceRef]:
        dirty = self._replace_node(name, NodeView(None, {}))
        del self.nodes[name]
        self._summarised.discard(name)
        return dirty

    def _replace_node(self, name: str, new: NodeView) -> set[ResourceRef]:
        old = self.nodes.get(name) or NodeView(None, {})
        labels = new.labels
        if labels is not None:
            new.selectors = {s for s in self._sel_refs if s.matches(labels)}
        for s in old.selectors - new.selectors:
            self._sel_nodes[s].discard(name)
        for s in new.selectors - old.selectors:
            self._sel_nodes[s].add(name)
        for ref in old.listed.keys() - new.listed.keys():
            self._listed_by_ref[ref].discard(name)
        for ref in new.listed:
            self._listed_by_ref.setdefault(ref, set()).add(name)
        self.nodes[name] = new
        self._summarised.discard(name)
        dirty = {
            ref
            for ref in old.listed.keys() | new.listed.keys()
            if old.listed.get(ref) != new.listed.get(ref)
        }
        if new.summarised:
            self._summarised.add(name)
            new.solved = old.solved  # until flush() re-checks them (the indexes agree)
            self._pending_nodes.add(name)
        else:
            for b, before in old.solved.items():
                dirty |= self._index(name, b, before, {})
        if old.summarised != new.summarised:
            changed_selectors = old.selectors | new.selectors
        else:
            changed_selectors = old.selectors ^ new.selectors
        for s in changed_selectors:
            dirty |= self._sel_refs.get(s, set())
        return dirty

    def _recheck(self, name: str, node: NodeView, b: int) -> set[ResourceRef]:
        before = node.solved.get(b, {})
        after = self._solve(node, b)
        if after == before:
            return set()
        if after == {}:
            del node.solved[b]
        else:
            node.solved[b] = after
        return self._index(name, b, before, after)

    def _index(self, name: str, b: int, before: Solution, after: Solution) -> set[ResourceRef]:
        """Move one node's bucket from `before` to `after` in the indexes; the refs it moves."""
        if before == after:
            return set()
        for sol, add in ((before, False), (after, True)):
            if sol is None:
                nodes = self._unresolved.setdefault(b, set())
                nodes.add(name) if add else nodes.discard(name)
                continue
            for ref, gen in sol.items():
                assigned = self._assigned.setdefault(ref, {})
                if add:
                    assigned[name] = gen
                else:
                    assigned.pop(name, None)
        if before is None or after is None:
            return set(self._members.get(b, set())) | self._recent_by_bucket.get(b, set())
        return {
            ref for ref in before.keys() | after.keys() if before.get(ref, -1) != after.get(ref, -1)
        }

    def _selected(self, node: NodeView, t: Tracked | None) -> bool:
        return t is not None and t.selector is not None and t.selector in node.selectors

    def _solve(self, node: NodeView, b: int) -> Solution:
        """{} when bucket b of the node matches the current generations; else its explanation."""
        expected = 0
        for s in node.selectors:
            expected ^= self._sel_digest[s][b]
        for ref in node.listed_buckets.get(b, ()):
            t = self.tracked.get(ref)
            if self._selected(node, t):
                assert t is not None
                expected ^= t.item
        target = node.digests[b]
        if expected == target:
            return {}
        candidates = sorted(r for r in self._recent_by_bucket.get(b, ()) if r not in node.listed)
        base = expected
        current: dict[ResourceRef, int] = {}  # candidates counted in `expected`
        others: list[list[tuple[ResourceRef, int | None, int]]] = []  # their other options
        for ref in candidates:
            t = self.tracked.get(ref)
            cur = t.item if t is not None and self._selected(node, t) else 0
            current[ref] = cur
            opts: list[tuple[ResourceRef, int | None, int]] = []
            for uid, gen in self._recent[ref].earlier:
                same = t is not None and t.uid == uid
                opts.append((ref, gen if same else None, summary.item(ref, uid, gen) ^ cur))
            if cur:
                opts.append((ref, None, cur))  # not applied at all
            others.append(opts)
        # Fewest lagging resources first: one, then two, then three (a mass change that
        # leaves more of one bucket behind makes it pending until the node catches up).
        tries = 0
        for k in range(1, min(3, len(others)) + 1):
            for group in itertools.combinations(others, k):
                for combo in itertools.product(*group):
                    tries += 1
                    if tries > MAX_SEARCH:
                        return None
                    x = base
                    for _, _, flip in combo:
                        x ^= flip
                    if x == target:
                        return {ref: gen for ref, gen, _ in combo}
        return None

    # status inputs ------------------------------------------------------------------------

    def inputs(self, ref: ResourceRef) -> tuple[list[Entry], int, int]:
        """(reports of the nodes that need one, nodes Applied at the current generation
        without one, nodes where it is Inactive by nodeSelector without one)."""
        t = self.tracked.get(ref)
        if t is None:
            return [], 0, 0
        b = summary.bucket_of(ref)
        assigned = self._assigned.get(ref, {})
        special = self._listed_by_ref.get(ref, set()) | self._unresolved.get(b, set())
        special |= assigned.keys()
        selected = self._sel_nodes.get(t.selector, set()) if t.selector is not None else set()
        reports: list[Entry] = []
        special_summarised = 0
        for name in special:
            node = self.nodes[name]
            special_summarised += node.summarised
            if ref in node.listed:
                reports.extend(node.listed[ref])
            elif not node.summarised:
                continue
            elif name not in selected and assigned.get(name) is None:
                reports.append(
                    Entry(name, ref, t.uid, t.generation, State.INACTIVE, summary.SELECTOR_MISMATCH)
                )
            else:
                gen = assigned.get(name)
                reports.append(Entry(name, ref, t.uid, gen, State.APPLIED, PENDING_REASON))
        ready = len(selected) - len(selected & special)
        inactive = (
            len(self._summarised) - len(selected) - (special_summarised - len(selected & special))
        )
        return reports, ready, inactive
