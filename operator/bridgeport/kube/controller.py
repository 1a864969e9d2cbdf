"""`bridgeport controller`: folds the agents' NodeState reports into each resource's `.status`.

This module is the wiring: kopf handlers that feed the in-memory store (`kube.store`), one
debounced, coalescing reconcile task, a slow resync, and the process entry point. Its parts:
`kube.listing` (the first complete view, pruning), `kube.status_writer` (status patches),
`kube.events` (Events for condition transitions), `kube.peering` (which replica may write),
`kube.controller_metrics`.

One writer per object: agents write only their own NodeState (status subresource); this
process is the only writer of PortPublication / BridgeNetwork `.status`, and one replica is
active at a time (kopf peering, `ClusterKopfPeering` named `bridgeport-controller`).

kopf only feeds the store: `@kopf.on.event` handlers record every object and deletion and wake
the reconciler (no `@kopf.index`: kopf gates indexed kinds with one toggle per object,
quadratic in the size of a listing). Nothing is ever written to the resources by kopf: no
finalizers, no annotations, no progress storage. Status-only changes of the resources (our own
writes) do not mark anything dirty; a slow periodic resync repairs everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport.core.specs import GROUP, NODESTATES, PLURALS, VERSION, ResourceRef
from bridgeport.kube.api import kopf_settings as shared_kopf_settings
from bridgeport.kube.api import load_api
from bridgeport.kube.controller_metrics import API_ERRORS, METRICS, RECONCILE_SECONDS
from bridgeport.kube.listing import FirstListing, Lister, node_key, prune, seen_keys
from bridgeport.kube.peering import PEERING_NAME, Peering
from bridgeport.kube.status_writer import StatusWriter
from bridgeport.kube.store import NoDiffBaseStorage, NoProgressStorage, Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller behaves (the `bridgeport controller` flags)."""

    namespace_scope: str | None = None
    """Watch the PortPublications of this namespace only; BridgeNetworks, NodeStates and
    peering stay cluster-wide."""

    peering: bool = True
    """One of several replicas, one active at a time (`--no-peering`: a single replica that
    never waits for the peering object)."""

    peering_name: str = PEERING_NAME
    """The ClusterKopfPeering object the replicas share."""

    debounce: float = 0.5
    """Seconds to let a burst of reports coalesce into one reconcile pass."""

    resync: float = 300.0
    """Seconds (+-10%) between resyncs: forget objects deleted unseen, rewrite every status
    that someone else changed."""

    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    """kopf's liveness endpoint (None: none)."""

    metrics_port: int | None = None
    """Serve /metrics on this port (None: not at all)."""


class Controller:
    def __init__(
        self, settings: ControllerSettings | None = None, *, api: client.ApiClient | None = None
    ) -> None:
        self.config = settings or ControllerSettings()
        self.namespace_scope = self.config.namespace_scope
        self.store = Store()
        self.registry = kopf.OperatorRegistry()
        self._api = api
        self.peering = Peering(
            self._custom_objects, enabled=self.config.peering, name=self.config.peering_name
        )
        self.writer = StatusWriter(self.store, self._custom_objects, self.peering.identity)
        self.lister = Lister(self._custom_objects, self.namespace_scope)
        self.first = FirstListing()
        self._dirty: set[ResourceRef] = set()
        self._wake = asyncio.Event()
        self._failures = 0
        self._register()

    def _custom_objects(self) -> client.CustomObjectsApi:
        if self._api is None:
            self._api = load_api()
        return client.CustomObjectsApi(self._api)

    # kopf handlers ------------------------------------------------------------------------

    def _register(self) -> None:
        reg = self.registry
        # A bare OperatorRegistry has none of kopf's default login handlers: use the
        # kubernetes client's (in-cluster service account, else KUBECONFIG), like the API calls.
        kopf.on.login(registry=reg)(kopf.login_via_client)
        # Event handlers only, no kopf indexes: kopf gates indexed kinds with one toggle per
        # object, which is quadratic in the objects of a listing (minutes at 10,000).
        for plural in PLURALS.values():
            kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-event", registry=reg)(
                self._resource_event
            )
        kopf.on.event(GROUP, VERSION, NODESTATES, id="nodestates-event", registry=reg)(
            self._node_event
        )

    def _record_resource(self, body: kopf.Body) -> None:
        if self.namespace_scope and body.metadata.namespace not in (None, self.namespace_scope):
            return
        dirty = self.store.put_resource(_plain(body))[1]
        uid = body.metadata.uid or ""
        self.first.saw(uid)
        self.writer.seen(uid, body.metadata.get("resourceVersion"))
        self._mark(dirty)

    async def _resource_event(self, event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        uid = body.metadata.uid or ""
        if event.get("type") is None:
            self.writer.relisted(uid)
        if event.get("type") != "DELETED":
            self._record_resource(body)
        else:
            self.first.saw(uid)
            kind = str(body.get("kind", ""))
            ref = ResourceRef(kind, body.metadata.namespace or "", body.metadata.name or "")
            dirty = self.store.drop_resource(ref, uid)
            if dirty is not None:
                self.writer.forget(uid)
                self._mark(dirty)
        self._ready()

    async def _node_event(
        self, event: Mapping[str, Any], name: str, status: Mapping[str, Any], **_: Any
    ) -> None:
        self.first.saw(node_key(name))
        if event.get("type") == "DELETED":
            self._mark(self.store.drop_node(name))
        else:
            self._mark(self.store.put_node(name, status))
        self._ready()

    async def _expect_listing(self) -> None:
        """List what a complete store holds (again while some never arrive)."""
        delay = 10.0
        while not self.first.complete:
            try:
                listed = await asyncio.to_thread(self.lister.everything)
            except (ApiException, OSError) as exc:
                API_ERRORS.labels("list").inc()
                log.warning("cannot list for the first complete view; retrying", error=str(exc))
                await asyncio.sleep(5.0)
                continue
            self.first.expect(listed, seen_keys(self.store))
            self._ready()
            await asyncio.sleep(delay)  # a standby (paused by peering) sees no events at all
            delay = min(300.0, delay * 2)

    def _ready(self) -> None:
        if self.first.reached():
            log.info(
                "first complete listing received",
                resources=len(self.store.resources),
                nodes=len(self.store.nodes),
            )
            self._dirty.update(self.store.resources)
        if self.first.complete and (self._dirty or self.store.view.pending):
            self._wake.set()

    def _mark(self, refs: Iterable[ResourceRef]) -> None:
        self._dirty.update(refs)
        if self.first.complete and (self._dirty or self.store.view.pending):
            self._wake.set()

    # the reconciler -----------------------------------------------------------------------

    async def reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.config.debounce)  # coalesce a burst of reports into one pass
            self._wake.clear()
            if not self.first.complete or not (self._dirty or self.store.view.pending):
                continue
            if not await self.peering.active():
                await asyncio.sleep(5.0)
                self._wake.set()
                continue
            dirty, self._dirty = self._dirty, set()
            started = time.perf_counter()
            dirty |= self.store.flush()
            retry = await self.writer.write(dirty)
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
            if retry:
                self._failures += 1
                delay = min(60.0, 2.0 ** min(self._failures, 6))
                log.warning("status writes failed; retrying", resources=len(retry), delay=delay)
                self._dirty |= retry
                asyncio.get_running_loop().call_later(delay, self._wake.set)
            else:
                self._failures = 0

    async def resync_forever(self) -> None:
        """Repair what no event told us: objects deleted while our watch was down and status
        edited by someone else."""
        while True:
            await asyncio.sleep(self.config.resync * random.uniform(0.9, 1.1))
            if not self.first.complete or not await self.peering.active():
                continue
            try:
                await self.prune()
            except (ApiException, OSError) as exc:
                API_ERRORS.labels("list").inc()
                log.warning("resync listing failed", error=str(exc))
            self._mark(self.store.resources)

    async def prune(self) -> None:
        """Forget objects that no longer exist but were not seen deleted."""
        dirty, gone = await prune(self.store, self.lister)
        for uid in gone:
            self.writer.forget(uid)
        self._mark(dirty)

    # running ------------------------------------------------------------------------------

    def kopf_settings(self) -> kopf.OperatorSettings:
        """kopf's settings for this process: the shared ones, storage of nothing, peering."""
        s = shared_kopf_settings()
        s.persistence.progress_storage = NoProgressStorage()
        s.persistence.diffbase_storage = NoDiffBaseStorage()
        self.peering.configure(s)
        return s

    async def run(self) -> None:
        settings = self.kopf_settings()

        @kopf.on.startup(registry=self.registry)
        async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            # kopf derives the peering scope from `clusterwide`; ours is always cluster-wide
            # (one active controller for the whole cluster), even when watching one namespace.
            settings.peering.clusterwide = True

        # Started before kopf, so kopf's shutdown leaves them to us (it only reaps its own).
        tasks = [
            asyncio.create_task(self.reconcile_forever(), name="bridgeport reconciler"),
            asyncio.create_task(self.resync_forever(), name="bridgeport resync"),
            asyncio.create_task(self._expect_listing(), name="bridgeport first listing"),
        ]
        if self.peering.enabled:
            tasks.append(asyncio.create_task(self.peering.explain_wait(), name="peering check"))
        log.info(
            "controller starting",
            identity=self.peering.identity,
            peering=self.peering.enabled,
            priority=self.peering.priority,
            namespace=self.namespace_scope or "(all)",
        )
        try:
            await kopf.operator(
                registry=self.registry,
                settings=settings,
                identity=cast(Any, self.peering.identity),
                clusterwide=not self.namespace_scope,
                namespaces=[self.namespace_scope] if self.namespace_scope else (),
                liveness_endpoint=self.config.liveness_endpoint,
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """The parts we keep, copied out of kopf's live view of the object."""
    meta = {k: body.metadata.get(k) for k in _META_KEYS if k in body.metadata}
    return copy.deepcopy(
        {
            "kind": body.get("kind"),
            "metadata": meta,
            "spec": dict(body.spec),
            "status": dict(body.status),
        }
    )


_META_KEYS = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
)


def run_controller(settings: ControllerSettings) -> int:
    """The `bridgeport controller` process: blocks until SIGTERM/SIGINT, then returns 0."""
    from bridgeport.metrics import serve

    serve(settings.metrics_port or 0, METRICS)  # raises PortTaken, the CLI prints one line
    controller = Controller(settings, api=load_api())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(controller.run())
    log.info("controller stopped")
    return 0
