"""What exists, by listing metadata: the controller's first complete view, and pruning.

kopf's watch events fill the store; listings only say what the store must hold. No status is
computed before the store holds every object of a listing made at start (a partial view would
flap Ready and post bogus Events at every restart), and a periodic listing forgets objects
deleted while the watch was down (kopf does not replay those after a re-list).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from kubernetes import client

from bridgeport.core.specs import NODESTATES, PLURALS, PORT_PUBLICATION, ResourceRef
from bridgeport.kube.api import list_metadata
from bridgeport.kube.store import Store

log = structlog.get_logger(__name__)


def node_key(name: str) -> str:
    """How a NodeState counts among the uids of a listing."""
    return f"nodestate/{name}"


@dataclass
class Lister:
    api: Callable[[], client.CustomObjectsApi]
    namespace_scope: str | None = None
    """PortPublications of this namespace only (BridgeNetworks are cluster-scoped)."""

    def keys(self, plural: str, key: str) -> set[str]:
        """`key` (uid, name) of every object of `plural` in scope. Blocking."""
        scope = self.namespace_scope if plural == PLURALS[PORT_PUBLICATION] else None
        return list_metadata(self.api(), plural, key, scope)

    def everything(self) -> set[str]:
        """Every resource's uid and every NodeState's `node_key`. Blocking."""
        out = set().union(*(self.keys(plural, "uid") for plural in PLURALS.values()))
        return out | {node_key(n) for n in self.keys(NODESTATES, "name")}


@dataclass
class FirstListing:
    """Whether the store is complete: it holds every object of a listing made at start (made
    again while some never arrive: they were deleted meanwhile)."""

    complete: bool = False
    _known: bool = False  # a listing was made
    _missing: set[str] = field(default_factory=set)  # listed and not seen yet

    def saw(self, key: str) -> None:
        self._missing.discard(key)

    def expect(self, listed: set[str], seen: set[str]) -> None:
        self._missing = listed - seen
        self._known = True

    def reached(self) -> bool:
        """True once: when the store has just become complete."""
        if self.complete or not self._known or self._missing:
            return False
        self.complete = True
        return True


def seen_keys(store: Store) -> set[str]:
    """The listing keys of what the store holds."""
    seen = {c.resource.uid for c in store.resources.values()}
    return seen | {node_key(n) for n in store.node_seen}


async def prune(store: Store, lister: Lister) -> tuple[set[ResourceRef], set[str]]:
    """Forget objects that no longer exist but were not seen deleted: the refs whose status
    may change, and the uids forgotten."""
    started = time.monotonic()
    dirty: set[ResourceRef] = set()
    gone: set[str] = set()
    for kind, plural in PLURALS.items():
        uids = await asyncio.to_thread(lister.keys, plural, "uid")
        for ref, cached in list(store.resources.items()):
            if ref.kind == kind and cached.seen < started and cached.resource.uid not in uids:
                log.info("forgetting a resource deleted while unwatched", resource=str(ref))
                dirty |= store.drop_resource(ref, cached.resource.uid) or set()
                gone.add(cached.resource.uid)
    names = await asyncio.to_thread(lister.keys, NODESTATES, "name")
    for node, seen in list(store.node_seen.items()):
        if seen < started and node not in names:
            log.info("forgetting a NodeState deleted while unwatched", node=node)
            dirty |= store.drop_node(node)
    return dirty, gone
