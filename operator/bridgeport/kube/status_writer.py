"""Writes each resource's `.status`: the only writer of PortPublication and BridgeNetwork
status.

The desired status comes from `bridgeport.core.status` over the store's folded reports. It is
merge-patched only when it differs from what is there; until the watch delivers our own write
back, the status we wrote stands for the object's (so a lagging watch causes no second
write). A status the API server rejects (a 4xx other than 404/408/409/429) is not retried
until it changes. After each successful write, one Event per condition transition.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport.core import status as st
from bridgeport.core.specs import GROUP, PLURALS, VERSION, ResourceRef
from bridgeport.kube.api import MERGE_PATCH
from bridgeport.kube.controller_metrics import API_ERRORS, STATUS_WRITES
from bridgeport.kube.events import post_event
from bridgeport.kube.store import Cached, Store, Written

log = structlog.get_logger(__name__)


class StatusWriter:
    def __init__(
        self, store: Store, api: Callable[[], client.CustomObjectsApi], instance: str
    ) -> None:
        self.store = store
        self.api = api
        self.instance = instance  # this replica, as Events name it
        self._written: dict[str, Written] = {}  # by uid
        self._rejected: dict[str, dict[str, Any]] = {}  # by uid: desired statuses refused

    def seen(self, uid: str, resource_version: str | None) -> None:
        """The watch delivered this version of an object (ours, if we wrote it)."""
        w = self._written.get(uid)
        if w is not None and resource_version == w.resource_version:
            w.caught_up = True

    def relisted(self, uid: str) -> None:
        """A (re-)listing delivered the object: at least as new as our finished writes."""
        w = self._written.get(uid)
        if w is not None:
            w.caught_up = True

    def forget(self, uid: str) -> None:
        """The object is gone."""
        self._written.pop(uid, None)
        self._rejected.pop(uid, None)

    async def write(self, refs: Iterable[ResourceRef]) -> set[ResourceRef]:
        """Write the status of each resource in `refs` if it changed; the refs to retry."""
        retry: set[ResourceRef] = set()
        now = datetime.datetime.now(datetime.UTC)
        for ref in sorted(refs):
            cached = self.store.resources.get(ref)
            if cached is None:
                continue  # reports about a resource that does not exist (anymore)
            try:
                await self._sync_one(cached, now)
            except (ApiException, OSError) as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    continue  # deleted meanwhile; its DELETED event follows
                API_ERRORS.labels("patch").inc()
                log.warning(
                    "cannot write status", resource=str(ref), error=str(getattr(exc, "reason", exc))
                )
                retry.add(ref)
        return retry

    async def _sync_one(self, cached: Cached, now: datetime.datetime) -> None:
        res = cached.resource
        w = self._written.get(res.uid)
        if w is not None and cached.resource_version == w.resource_version:
            w.caught_up = True
        lagging = w is not None and not w.caught_up
        current = w.status if w is not None and lagging else cached.status
        old_conditions = tuple(c for c in current.get("conditions") or () if isinstance(c, Mapping))
        resource = st.Resource(res.ref, res.uid, res.generation, old_conditions)
        reports, ready, inactive = self.store.inputs(res.ref)
        desired = st.compute_status(resource, reports, st.rfc3339(now), ready, inactive)
        if (
            w is not None
            and w.desired == desired
            and (lagging or cached.resource_version == w.resource_version)
        ):
            return  # already written (what the server kept of it is in w.status)
        if self._rejected.get(res.uid) == desired:
            return
        patch = st.status_patch(current, desired)
        if patch is None:
            return
        ref = res.ref
        try:
            obj = await asyncio.to_thread(self._patch_status, ref, patch)
        except ApiException as exc:
            if (
                exc.status is not None
                and 400 <= exc.status < 500
                and exc.status not in (404, 408, 409, 429)
            ):
                API_ERRORS.labels("patch").inc()
                log.error(
                    "the API server rejected our status; not retrying until it changes",
                    resource=str(ref),
                    status=exc.status,
                    error=str(exc.body)[:500],
                )
                self._rejected[res.uid] = desired
                return
            raise
        self._rejected.pop(res.uid, None)
        meta = obj.get("metadata") or {}
        stored = obj.get("status")
        self._written[res.uid] = Written(
            str(meta.get("resourceVersion", "")),
            desired,
            dict(stored) if isinstance(stored, Mapping) else {},
        )
        STATUS_WRITES.labels(ref.kind).inc()
        log.info(
            "status written", resource=str(ref), ready=desired["ready"], generation=res.generation
        )
        for t in st.transitions(old_conditions, desired["conditions"]):
            await post_event(self.api(), res, t, now, self.instance)

    def _patch_status(self, ref: ResourceRef, patch: dict[str, Any]) -> dict[str, Any]:
        plural = PLURALS[ref.kind]
        body = {"status": patch}
        if ref.namespace:
            obj = self.api().patch_namespaced_custom_object_status(
                GROUP, VERSION, ref.namespace, plural, ref.name, body, _content_type=MERGE_PATCH
            )
        else:
            obj = self.api().patch_cluster_custom_object_status(
                GROUP, VERSION, plural, ref.name, body, _content_type=MERGE_PATCH
            )
        return cast(dict[str, Any], obj)
