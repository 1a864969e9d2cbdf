"""A node's report entries kept in O(change): counts, exceptions, digests (pure).

A reconcile among thousands of resources changes a few outcomes. The ledger takes those
changes and keeps up to date what the reports need: the count per state, the entries a report
lists (core/report.py `summarised`), the XOR digests of the Applied ones (core/summary.py) and
the set of Applied resources (incumbency), so a NodeState status or a state file costs
O(exceptions + changes), not O(resources). It always equals `report.tally` over its entries
and `count_states` over their states (a hypothesis property says so).
"""

from __future__ import annotations

from collections.abc import Iterable

from bridgeport.core import summary
from bridgeport.core.plan import State
from bridgeport.core.report import Entry, Tally, summarised
from bridgeport.core.specs import ResourceRef


class Ledger:
    def __init__(self) -> None:
        self._clear()
        # What changed since take_changes(): ref -> its entry, None when gone; None: all.
        self._changes: dict[ResourceRef, Entry | None] | None = None

    def _clear(self) -> None:
        self.entries: dict[ResourceRef, Entry] = {}
        self.applied: set[ResourceRef] = set()  # state Applied, listed or not
        self._listed: dict[ResourceRef, Entry] = {}
        self._digests = [0] * summary.BUCKETS
        self._summarised_applied = 0
        self._counts: dict[str, int] = {}

    def reset(self, entries: Iterable[Entry]) -> None:
        """Everything anew (a full reconcile)."""
        self._clear()
        for e in entries:
            old = self.entries.get(e.ref)
            if old is not None:  # one entry per resource: the last one
                self._remove(old)
            self._add(e)
        self._changes = None

    def put(self, e: Entry) -> None:
        old = self.entries.get(e.ref)
        if old == e:
            return
        if old is not None:
            self._remove(old)
        self._add(e)
        if self._changes is not None:
            self._changes[e.ref] = e

    def drop(self, ref: ResourceRef) -> None:
        old = self.entries.get(ref)
        if old is None:
            return
        self._remove(old)
        if self._changes is not None:
            self._changes[ref] = None

    def take_changes(self) -> dict[ResourceRef, Entry | None] | None:
        """The changes since the last call (None: everything changed), and start afresh."""
        changes, self._changes = self._changes, {}
        return changes

    def counts(self) -> dict[str, int]:
        """Entries per state, every State present (zero included)."""
        return {**{s.value: 0 for s in State}, **{k: v for k, v in self._counts.items() if v}}

    def tally(self) -> Tally:
        listed = tuple(self._listed[r] for r in sorted(self._listed))
        return Tally(listed, self._summarised_applied, tuple(self._digests))

    def _add(self, e: Entry) -> None:
        self.entries[e.ref] = e
        self._counts[e.state] = self._counts.get(e.state, 0) + 1
        if e.applied:
            self.applied.add(e.ref)
        if not summarised(e):
            self._listed[e.ref] = e
        elif e.applied:
            self._flip(e)
            self._summarised_applied += 1

    def _remove(self, e: Entry) -> None:
        del self.entries[e.ref]
        self._counts[e.state] -= 1
        self.applied.discard(e.ref)
        if not summarised(e):
            del self._listed[e.ref]
        elif e.applied:
            self._flip(e)
            self._summarised_applied -= 1

    def _flip(self, e: Entry) -> None:
        self._digests[summary.bucket_of(e.ref)] ^= summary.item(
            e.ref, e.uid, e.observed_generation or 0
        )
