"""The agent's view of the cluster, kept small: what its list-watches feed it (no I/O here).

Every agent sees every PortPublication of the cluster, but plans only those whose nodeSelector
matches its node. So the cache keeps the parsed spec only of those (and of every BridgeNetwork
and every invalid object, which every agent reports), and of the rest a stub: uid, generation
and nodeSelector (interned: thousands of objects share a few selectors). A snapshot holds only
what can select the node; the controller derives "Inactive, NodeSelectorMismatch" for the rest
from the labels the agent reports, which are always the labels the snapshot was made for.

A change of the node's labels that makes stubs match needs their specs: the labels become
`pending`, the caller relists the publications (keeping the specs that match either labels),
and only when no stub matches the pending labels do they become the snapshot's labels. Until
then the snapshot stays consistent with the old labels.

A (re)list is upserts in place and, at its end, a sweep of what it did not return: a snapshot
taken meanwhile holds every object at some recent version (and deleted ones until the sweep),
never a partial listing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from bridgeport.core import specs
from bridgeport.core.source import Snapshot
from bridgeport.core.specs import (
    API_VERSION,
    BRIDGE_NETWORK,
    PORT_PUBLICATION,
    InvalidResource,
    NodeSelector,
    ParseResult,
)

NODE = "Node"
KINDS = (NODE, BRIDGE_NETWORK, PORT_PUBLICATION)
Key = tuple[str, str]  # namespace, name


class Stub(NamedTuple):
    """A publication that cannot select this node: enough to notice when it could."""

    uid: str
    generation: int
    selector: NodeSelector


class Labels(Enum):
    """What a change of the node's labels needs."""

    SAME = "same"  # nothing changes
    CHANGED = "changed"  # the snapshot's labels changed: replan
    RELIST = "relist"  # stubs may now match: relist the publications first


def document(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The parts of an object the parser reads (status and managed fields are never needed;
    list items of some servers carry no apiVersion)."""
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": kind,
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "generation", "creationTimestamp", "uid")
            if k in meta
        },
        "spec": body.get("spec"),
    }


def _identity(body: Mapping[str, Any]) -> tuple[Key, str, int]:
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    generation = meta.get("generation")
    # Interned: 100,000 stubs share a few namespaces.
    return (
        (sys.intern(str(meta.get("namespace") or "")), str(meta.get("name") or "")),
        str(meta.get("uid") or ""),
        generation if isinstance(generation, int) else 0,
    )


def _uid_generation(res: ParseResult) -> tuple[str, int]:
    if isinstance(res, InvalidResource):
        return res.uid, res.generation
    return res.meta.uid, res.meta.generation


@dataclass
class _Listing:
    seen: set[Key] = field(default_factory=set)
    changed: bool = False


class ClusterCache:
    """Not thread-safe: the source serialises calls."""

    def __init__(
        self,
        parse: Callable[[Mapping[str, Any], str], ParseResult] | None = None,
    ) -> None:
        self._parse = parse or (lambda body, kind: specs.parse(document(body, kind)))
        self.full: dict[str, dict[Key, ParseResult]] = {BRIDGE_NETWORK: {}, PORT_PUBLICATION: {}}
        self.stubs: dict[Key, Stub] = {}
        self._selectors: dict[NodeSelector, list[Any]] = {}  # selector -> [itself, stub count]
        self.labels: dict[str, str] = {}  # what the snapshot is for
        self.pending: dict[str, str] | None = None  # the node's newer labels, while relisting
        # A relist was asked for the pending labels: more Node events with them (a kubelet's
        # status updates) must not start another listing of every publication.
        self._relist_asked = False
        # The Node's uid as last seen, kept after it is deleted: a NodeState the agent writes
        # meanwhile is still owned by it, so the garbage collector removes it (an orphan
        # would count as a node forever).
        self.node_uid: str | None = None
        self._listed: set[str] = set()  # kinds whose first listing completed
        self._listing: dict[str, _Listing] = {}

    # -- what the agent reads ----------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._listed >= set(KINDS)

    def snapshot(self) -> Snapshot | None:
        if not self.complete:
            return None
        selected = [r for r in self.full[PORT_PUBLICATION].values() if self._visible(r)]
        return Snapshot(
            (*self.full[BRIDGE_NETWORK].values(), *selected), node_labels=dict(self.labels)
        )

    def counts(self) -> dict[str, int]:
        return {
            "bridgenetworks": len(self.full[BRIDGE_NETWORK]),
            "publications": len(self.full[PORT_PUBLICATION]),
            "stubs": len(self.stubs),
        }

    # -- what the list-watches write ---------------------------------------------------------

    def begin_list(self, kind: str) -> None:
        """A listing starts (again: one that failed half-way owes its notification still)."""
        unfinished = self._listing.get(kind)
        self._listing[kind] = _Listing(changed=unfinished is not None and unfinished.changed)

    def end_list(self, kind: str) -> bool:
        """The listing is complete: drop what it did not return. Whether the snapshot changed
        (True for the listing that completes the cache; never before)."""
        listing = self._listing.pop(kind, None)
        if listing is None:
            return False
        changed = listing.changed
        if kind == NODE:
            if not listing.seen:
                changed |= self._node_gone()
        else:
            for key in [k for k in self._keys(kind) if k not in listing.seen]:
                changed |= self._drop(kind, key)
        was_complete = self.complete
        self._listed.add(kind)
        if kind == PORT_PUBLICATION and self.pending is not None:
            if self._stubs_match(self.pending):
                self._relist_asked = False  # it began before these labels: ask again
            else:
                changed |= self._switch_labels(self.pending)
        return self.complete and (changed or not was_complete)

    def put(self, kind: str, body: Mapping[str, Any]) -> bool:
        """An object was added or modified; whether the snapshot changed (never before the
        cache is complete). During a listing the answer is kept for its end (a listing
        notifies once)."""
        key, uid, generation = _identity(body)
        listing = self._listing.get(kind)
        if listing is not None:
            listing.seen.add(key)
        changed = (
            self._set_node(body) if kind == NODE else self._put(kind, key, uid, generation, body)
        )
        if listing is not None:
            listing.changed |= changed
            return False
        return changed and self.complete

    def delete(self, kind: str, body: Mapping[str, Any]) -> bool:
        key, uid, _ = _identity(body)
        if kind == NODE:
            return self._node_gone()
        if uid and uid != self._uid(kind, key):
            return False  # not the incarnation we hold
        changed = self._drop(kind, key)
        listing = self._listing.get(kind)
        if listing is not None:
            listing.changed |= changed
            return False
        return changed and self.complete

    def needs_relist(self) -> bool:
        """Stubs match the pending labels: the publications' specs must be listed again."""
        return self.pending is not None and self._stubs_match(self.pending)

    def ask_relist(self) -> bool:
        """Whether to ask for that listing now: it is needed and was not asked for these
        pending labels yet (or a listing that began before them has ended). Marks it asked."""
        if self._relist_asked or not self.needs_relist():
            return False
        self._relist_asked = True
        return True

    # -- publications and networks -----------------------------------------------------------

    def _put(self, kind: str, key: Key, uid: str, generation: int, body: Mapping[str, Any]) -> bool:
        if self._unchanged(kind, key, uid, generation):
            return False  # a status-only change (ours or the controller's): nothing to do
        res = self._parse(body, kind)
        before = self._visible_key(kind, key)
        self._remove(kind, key)
        if (
            kind == PORT_PUBLICATION
            and not isinstance(res, InvalidResource)
            and not self._wanted(res.node_selector)
        ):
            self._add_stub(key, Stub(uid, generation, res.node_selector))
            return before
        self.full[kind][key] = res
        return before or self._visible(res)

    def _drop(self, kind: str, key: Key) -> bool:
        before = self._visible_key(kind, key)
        self._remove(kind, key)
        return before

    def _remove(self, kind: str, key: Key) -> None:
        self.full[kind].pop(key, None)
        if kind == PORT_PUBLICATION:
            stub = self.stubs.pop(key, None)
            if stub is not None:
                self._release(stub.selector)

    def _keys(self, kind: str) -> list[Key]:
        keys = list(self.full[kind])
        return keys + list(self.stubs) if kind == PORT_PUBLICATION else keys

    def _uid(self, kind: str, key: Key) -> str | None:
        found = self._uid_generation(kind, key)
        return found[0] if found else None

    def _unchanged(self, kind: str, key: Key, uid: str, generation: int) -> bool:
        """The same incarnation at the same generation, and not a stub whose spec is now
        wanted (a relist for new labels must turn those into specs)."""
        if self._uid_generation(kind, key) != (uid, generation):
            return False
        stub = self.stubs.get(key) if kind == PORT_PUBLICATION else None
        return stub is None or not self._wanted(stub.selector)

    def _uid_generation(self, kind: str, key: Key) -> tuple[str, int] | None:
        res = self.full[kind].get(key)
        if res is not None:
            return _uid_generation(res)
        stub = self.stubs.get(key) if kind == PORT_PUBLICATION else None
        return (stub.uid, stub.generation) if stub is not None else None

    def _visible_key(self, kind: str, key: Key) -> bool:
        res = self.full[kind].get(key)
        return res is not None and self._visible(res)

    def _visible(self, res: ParseResult) -> bool:
        """In the snapshot: networks, invalid objects, publications selecting the node."""
        return not isinstance(res, specs.PortPublication) or res.node_selector.matches(self.labels)

    def _wanted(self, selector: NodeSelector) -> bool:
        """Keep the spec: it selects the node under its current or its pending labels."""
        return selector.matches(self.labels) or (
            self.pending is not None and selector.matches(self.pending)
        )

    # -- stubs -------------------------------------------------------------------------------

    def _add_stub(self, key: Key, stub: Stub) -> None:
        entry = self._selectors.setdefault(stub.selector, [stub.selector, 0])
        entry[1] += 1
        self.stubs[key] = stub._replace(selector=entry[0])  # one object per distinct selector

    def _release(self, selector: NodeSelector) -> None:
        entry = self._selectors[selector]
        entry[1] -= 1
        if not entry[1]:
            del self._selectors[selector]

    def _stubs_match(self, labels: Mapping[str, str]) -> bool:
        return any(s.matches(labels) for s in self._selectors)

    # -- the node ----------------------------------------------------------------------------

    def set_labels(self, labels: Mapping[str, str]) -> Labels:
        """The node's labels as the watch sees them now."""
        labels = dict(labels)
        if labels == self.labels:
            if self.pending is not None:  # back to the labels of the snapshot
                self.pending, self._relist_asked = None, False
                self._demote()
            return Labels.SAME
        if self._stubs_match(labels):
            if labels != self.pending:
                self.pending, self._relist_asked = labels, False
            return Labels.RELIST
        self._switch_labels(labels)
        return Labels.CHANGED

    def _set_node(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        self.node_uid = str(meta.get("uid") or "") or self.node_uid
        labels = meta.get("labels")
        return self.set_labels(labels if isinstance(labels, Mapping) else {}) is Labels.CHANGED

    def _node_gone(self) -> bool:
        return self.set_labels({}) is Labels.CHANGED

    def _switch_labels(self, labels: dict[str, str]) -> bool:
        self.labels, self.pending, self._relist_asked = labels, None, False
        self._demote()
        return True

    def _demote(self) -> None:
        """Specs kept for labels the node no longer has become stubs."""
        pubs = self.full[PORT_PUBLICATION]
        for key, res in list(pubs.items()):
            if isinstance(res, specs.PortPublication) and not self._wanted(res.node_selector):
                del pubs[key]
                self._add_stub(key, Stub(res.meta.uid, res.meta.generation, res.node_selector))
