"""The controller's memory: every tracked resource and every node's report entries (`Store`),
what it last wrote to each status (`Written`); kopf storage that keeps no state on the objects
(the controller recomputes from the NodeStates); and the rule deciding which controller replica
is the active peer."""

from __future__ import annotations

import datetime
import getpass
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from bridgeport.core import report
from bridgeport.core import status as st
from bridgeport.core.report import Entry
from bridgeport.core.specs import ResourceRef

# -- kopf: store nothing anywhere ----------------------------------------------------------------

class NoProgressStorage(kopf.ProgressStorage):
    """Handler progress is never persisted: our handlers (index, event) have no progress."""

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body,
              patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """No last-handled-configuration annotation: there are no change-detecting handlers."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


# -- the in-memory store -------------------------------------------------------------------------

@dataclass
class Cached:
    resource: st.Resource
    resource_version: str
    status: dict[str, Any]
    seen: float  # monotonic time of the last event
    created: str = ""  # creationTimestamp (RFC 3339 sorts as text)


@dataclass
class Written:
    """Our last successful status write to one object, until the watch has caught up."""

    resource_version: str
    desired: dict[str, Any]
    status: dict[str, Any]  # what the server stored (after schema pruning)
    caught_up: bool = False


@dataclass
class Store:
    resources: dict[ResourceRef, Cached] = field(default_factory=dict)
    nodes: dict[str, dict[ResourceRef, tuple[Entry, ...]]] = field(default_factory=dict)
    node_seen: dict[str, float] = field(default_factory=dict)
    by_ref: dict[ResourceRef, dict[str, tuple[Entry, ...]]] = field(default_factory=dict)

    def put_resource(self, body: Mapping[str, Any]) -> tuple[ResourceRef, bool]:
        """Record an object; True if its status must be recomputed (new object, new uid or
        new generation; a status-only change is not a reason)."""
        res = st.resource_from_body(body)
        meta = body.get("metadata") or {}
        old = self.resources.get(res.ref)
        if old is not None and old.resource.uid != res.uid and (
                meta.get("deletionTimestamp")
                or str(meta.get("creationTimestamp", "")) < old.created):
            # A late event of a deleted incarnation (kopf runs one worker per uid, so events
            # of two objects with the same name can interleave): the newer object stays.
            return res.ref, False
        status = body.get("status")
        self.resources[res.ref] = Cached(res, str(meta.get("resourceVersion", "")),
                                         dict(status) if isinstance(status, Mapping) else {},
                                         time.monotonic(),
                                         str(meta.get("creationTimestamp", "")))
        changed = (old is None or old.resource.uid != res.uid
                   or old.resource.generation != res.generation)
        return res.ref, changed

    def drop_resource(self, ref: ResourceRef, uid: str) -> bool:
        cached = self.resources.get(ref)
        if cached is None or (uid and cached.resource.uid != uid):
            return False
        del self.resources[ref]
        return True

    def put_node(self, node: str, status: Mapping[str, Any] | None) -> set[ResourceRef]:
        """Record one node's report; the refs whose entries changed."""
        grouped: dict[ResourceRef, list[Entry]] = {}
        for r in report.entries(node, status):
            grouped.setdefault(r.ref, []).append(r)
        new = {ref: tuple(rs) for ref, rs in grouped.items()}
        self.node_seen[node] = time.monotonic()
        return self._replace_node(node, new)

    def drop_node(self, node: str) -> set[ResourceRef]:
        self.node_seen.pop(node, None)
        return self._replace_node(node, {})

    def _replace_node(self, node: str, new: dict[ResourceRef, tuple[Entry, ...]]
                      ) -> set[ResourceRef]:
        old = self.nodes.get(node, {})
        changed = {ref for ref in old.keys() | new.keys() if old.get(ref) != new.get(ref)}
        for ref in changed:
            per_node = self.by_ref.setdefault(ref, {})
            if ref in new:
                per_node[node] = new[ref]
            else:
                per_node.pop(node, None)
                if not per_node:
                    del self.by_ref[ref]
        if new:
            self.nodes[node] = new
        else:
            self.nodes.pop(node, None)
        return changed

    def reports(self, ref: ResourceRef) -> list[Entry]:
        return [r for rs in self.by_ref.get(ref, {}).values() for r in rs]


# -- peering -------------------------------------------------------------------------------------

def own_identity() -> str:
    """Like kopf's: the pod name when set (POD_ID / POD_NAME), else user@host/time/random."""
    pod = os.environ.get("POD_ID") or os.environ.get("POD_NAME")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{user}@{socket.gethostname()}/{now}/{random.randrange(36**3):03x}"


def is_active_peer(peering_status: Mapping[str, Any] | None, identity: str, priority: int,
                   now: datetime.datetime) -> bool:
    """kopf's rule: pause while a live peer has a higher or the same priority."""
    for peer, info in (peering_status or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
            lifetime = datetime.timedelta(seconds=int(info.get("lifetime", 60)))
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        if seen + lifetime > now and other >= priority:
            return False
    return True
