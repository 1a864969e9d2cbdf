"""The controller's pieces that need no API server: kopf storage that stores nothing, the
in-memory store of resources and node reports, and kopf's peering rule."""

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

from bridgeport.core import specs
from bridgeport.core import status as st
from bridgeport.core.fold import ClusterView, NodeView, Tracked
from bridgeport.core.report import Entry
from bridgeport.core.specs import API_VERSION, NodeSelector, ResourceRef

# -- kopf: store nothing anywhere ----------------------------------------------------------------


class NoProgressStorage(kopf.ProgressStorage):
    """Handler progress is never persisted: our handlers (index, event) have no progress."""

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
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
    """Resources as the API returns them, and every node's report folded per resource."""

    resources: dict[ResourceRef, Cached] = field(default_factory=dict)
    node_seen: dict[str, float] = field(default_factory=dict)
    view: ClusterView = field(default_factory=ClusterView)

    @property
    def nodes(self) -> dict[str, NodeView]:
        return self.view.nodes

    def put_resource(self, body: Mapping[str, Any]) -> tuple[ResourceRef, set[ResourceRef]]:
        """Record an object; the refs whose status must be recomputed (for a new object, uid,
        generation or nodeSelector; a status-only change is not a reason)."""
        res = st.resource_from_body(body)
        meta = body.get("metadata") or {}
        old = self.resources.get(res.ref)
        if (
            old is not None
            and old.resource.uid != res.uid
            and (
                meta.get("deletionTimestamp")
                or str(meta.get("creationTimestamp", "")) < old.created
            )
        ):
            # A late event of a deleted incarnation (kopf runs one worker per uid, so events
            # of two objects with the same name can interleave): the newer object stays.
            return res.ref, set()
        status = body.get("status")
        now = time.monotonic()
        self.resources[res.ref] = Cached(
            res,
            str(meta.get("resourceVersion", "")),
            dict(status) if isinstance(status, Mapping) else {},
            now,
            str(meta.get("creationTimestamp", "")),
        )
        tracked = Tracked(res.ref, res.uid, res.generation, _selector(body))
        return res.ref, self.view.put_resource(tracked, now)

    def drop_resource(self, ref: ResourceRef, uid: str) -> set[ResourceRef] | None:
        """Forget an object; None when it is not the one stored, else the refs whose status
        may change (its neighbours in the nodes' digests)."""
        cached = self.resources.get(ref)
        if cached is None or (uid and cached.resource.uid != uid):
            return None
        del self.resources[ref]
        return self.view.drop_resource(ref, time.monotonic())

    def put_node(self, node: str, status: Mapping[str, Any] | None) -> set[ResourceRef]:
        """Record one node's report; the refs whose status may change."""
        self.node_seen[node] = time.monotonic()
        return self.view.put_node(node, status)

    def drop_node(self, node: str) -> set[ResourceRef]:
        self.node_seen.pop(node, None)
        return self.view.drop_node(node) if node in self.view.nodes else set()

    def flush(self) -> set[ResourceRef]:
        """Re-check the nodes' digests after a batch of events: refs whose status may move."""
        self.view.expire(time.monotonic())
        return self.view.flush()

    def inputs(self, ref: ResourceRef) -> tuple[list[Entry], int, int]:
        return self.view.inputs(ref)


def _selector(body: Mapping[str, Any]) -> NodeSelector | None:
    """The object's nodeSelector as the agents read it; None when its spec does not parse
    (every agent then reports it Invalid)."""
    parsed = specs.parse({"apiVersion": API_VERSION, **body})
    return None if isinstance(parsed, specs.InvalidResource) else parsed.node_selector


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


def is_active_peer(
    peering_status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime.datetime
) -> bool:
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
