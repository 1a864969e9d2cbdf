"""`bridgeport controller`: folds the agents' NodeState reports into each resource's `.status`.

One writer per object: agents write only their own NodeState (status subresource); this
process is the only writer of PortPublication / BridgeNetwork `.status`, and one replica is
active at a time (kopf peering, `ClusterKopfPeering` named `bridgeport-controller`).

kopf only feeds an in-memory store: `@kopf.on.event` handlers record every object and
deletion and wake the reconciler (no `@kopf.index`: kopf gates indexed kinds with one toggle
per object, quadratic in the size of a listing). The store counts as complete once it holds
every object of a metadata listing made at start: no status is computed from a partial view
(which would flap Ready and post bogus Events at every restart). Nothing
is ever written to the resources by kopf: no finalizers, no annotations, no progress storage.

One reconcile task (debounced, coalescing) computes the desired statuses with
`bridgeport.core.status`, merge-patches `/status` only when it differs from what is there,
and posts `events.k8s.io/v1` Events for condition transitions only (after a successful
patch, so a failed write never posts an Event twice). Status-only changes of the resources
(our own writes) do not mark anything dirty; a slow periodic resync repairs everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf
import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram

from bridgeport.core import status as st
from bridgeport.core.specs import (
    API_VERSION,
    BRIDGE_NETWORK,
    GROUP,
    NODESTATES,
    PLURALS,
    PORT_PUBLICATION,
    VERSION,
    ResourceRef,
)
from bridgeport.kube.api import kopf_settings, load_api
from bridgeport.kube.store import (
    Cached,
    NoDiffBaseStorage,
    NoProgressStorage,
    Store,
    Written,
    is_active_peer,
    own_identity,
)

log = structlog.get_logger(__name__)

PEERING_NAME = "bridgeport-controller"
PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"
REPORTING_CONTROLLER = "bridgeport.io/controller"
# Events about cluster-scoped objects live in "default", as the API server's own do.
CLUSTER_EVENT_NAMESPACE = "default"
MERGE_PATCH = "application/merge-patch+json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

METRICS = CollectorRegistry(auto_describe=True)
RECONCILE_SECONDS = Histogram(
    "bridgeport_controller_reconcile_duration_seconds",
    "Time to recompute and write the statuses of one batch of dirty resources",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=METRICS)
STATUS_WRITES = Counter("bridgeport_controller_status_writes_total",
                        "Status subresource patches", ["kind"], registry=METRICS)
EVENTS_POSTED = Counter("bridgeport_controller_events_total", "Kubernetes Events posted",
                        ["type", "reason"], registry=METRICS)
ERRORS = Counter("bridgeport_controller_errors_total", "API errors by operation", ["operation"],
                 registry=METRICS)


# -- the controller ------------------------------------------------------------------------------

class Controller:
    def __init__(self, *, namespace_scope: str | None = None, peering: bool = True,
                 debounce: float = 0.5, resync: float = 300.0,
                 api: client.ApiClient | None = None,
                 peering_name: str = PEERING_NAME) -> None:
        self.namespace_scope = namespace_scope
        self.peering = peering
        self.peering_name = peering_name
        self.debounce = debounce
        self.resync = resync
        self.identity = own_identity()
        self.priority = random.randint(1, 2**30)  # distinct per replica: exactly one is active
        self.store = Store()
        self.registry = kopf.OperatorRegistry()
        self._api = api
        self._dirty: set[ResourceRef] = set()
        self._wake = asyncio.Event()
        self._listed = False  # the store holds the first complete listing of every kind
        self._expecting = False  # _expected is known
        self._expected: set[str] = set()  # listed at start and not seen yet (uids, nodestate/x)
        self._written: dict[str, Written] = {}  # by uid
        self._rejected: dict[str, dict[str, Any]] = {}  # by uid: desired statuses the API refused
        self._failures = 0
        self._register()

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
                self._resource_event)
        kopf.on.event(GROUP, VERSION, NODESTATES, id="nodestates-event", registry=reg)(
            self._node_event)

    def _record_resource(self, body: kopf.Body) -> None:
        if self.namespace_scope and body.metadata.namespace not in (None, self.namespace_scope):
            return
        dirty = self.store.put_resource(_plain(body))[1]
        uid = body.metadata.uid or ""
        self._expected.discard(uid)
        w = self._written.get(uid)
        if w is not None and body.metadata.get("resourceVersion") == w.resource_version:
            w.caught_up = True
        self._mark(dirty)

    async def _resource_event(self, event: Mapping[str, Any], body: kopf.Body,
                              **_: Any) -> None:
        w = self._written.get(body.metadata.uid or "")
        if event.get("type") is None and w is not None:
            w.caught_up = True  # a (re-)listing is at least as new as our finished writes
        if event.get("type") != "DELETED":
            self._record_resource(body)
        else:
            self._expected.discard(body.metadata.uid or "")
            kind = str(body.get("kind", ""))
            ref = ResourceRef(kind, body.metadata.namespace or "", body.metadata.name or "")
            uid = body.metadata.uid or ""
            dirty = self.store.drop_resource(ref, uid)
            if dirty is not None:
                self._written.pop(uid, None)
                self._rejected.pop(uid, None)
                self._mark(dirty)
        self._ready()

    async def _node_event(self, event: Mapping[str, Any], name: str, status: Mapping[str, Any],
                          **_: Any) -> None:
        self._expected.discard(f"nodestate/{name}")
        if event.get("type") == "DELETED":
            self._mark(self.store.drop_node(name))
        else:
            self._mark(self.store.put_node(name, status))
        self._ready()

    async def _expect_listing(self) -> None:
        """What a complete store holds: every object of a metadata listing made at start (and
        made again while some never arrive: they were deleted meanwhile)."""
        delay = 10.0
        while not self._listed:
            try:
                expected = set(await asyncio.to_thread(
                    self._list_metadata, PLURALS[PORT_PUBLICATION], "uid"))
                expected |= await asyncio.to_thread(
                    self._list_metadata, PLURALS[BRIDGE_NETWORK], "uid")
                expected |= {f"nodestate/{n}" for n in await asyncio.to_thread(
                    self._list_metadata, NODESTATES, "name")}
            except (ApiException, OSError) as exc:
                ERRORS.labels("list").inc()
                log.warning("cannot list for the first complete view; retrying", error=str(exc))
                await asyncio.sleep(5.0)
                continue
            seen = {c.resource.uid for c in self.store.resources.values()}
            seen |= {f"nodestate/{n}" for n in self.store.node_seen}
            self._expected = expected - seen
            self._expecting = True
            self._ready()
            await asyncio.sleep(delay)  # a standby (paused by peering) sees no events at all
            delay = min(300.0, delay * 2)

    def _ready(self) -> None:
        if not self._listed and self._expecting and not self._expected:
            log.info("first complete listing received", resources=len(self.store.resources),
                     nodes=len(self.store.nodes))
            self._listed = True
            self._dirty.update(self.store.resources)
        if self._listed and (self._dirty or self.store.view.pending):
            self._wake.set()

    def _mark(self, refs: Iterable[ResourceRef]) -> None:
        self._dirty.update(refs)
        if self._listed and (self._dirty or self.store.view.pending):
            self._wake.set()

    # the reconciler -----------------------------------------------------------------------

    @property
    def api(self) -> client.CustomObjectsApi:
        if self._api is None:
            self._api = load_api()
        return client.CustomObjectsApi(self._api)

    async def reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.debounce)  # coalesce a burst of reports into one pass
            self._wake.clear()
            if not self._listed or not (self._dirty or self.store.view.pending):
                continue
            if not await self._active():
                await asyncio.sleep(5.0)
                self._wake.set()
                continue
            dirty, self._dirty = self._dirty, set()
            started = time.perf_counter()
            dirty |= self.store.flush()
            retry = await self.reconcile(dirty)
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
            if retry:
                self._failures += 1
                delay = min(60.0, 2.0 ** min(self._failures, 6))
                log.warning("status writes failed; retrying", resources=len(retry),
                            delay=delay)
                self._dirty |= retry
                asyncio.get_running_loop().call_later(delay, self._wake.set)
            else:
                self._failures = 0

    async def resync_forever(self) -> None:
        """Repair what no event told us: objects deleted while our watch was down (kopf does
        not replay those after a re-list) and status edited by someone else."""
        while True:
            await asyncio.sleep(self.resync * random.uniform(0.9, 1.1))
            if not self._listed or not await self._active():
                continue
            try:
                await self.prune()
            except (ApiException, OSError) as exc:
                ERRORS.labels("list").inc()
                log.warning("resync listing failed", error=str(exc))
            self._mark(self.store.resources)

    async def reconcile(self, refs: Iterable[ResourceRef]) -> set[ResourceRef]:
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
                ERRORS.labels("patch").inc()
                log.warning("cannot write status", resource=str(ref),
                            error=str(getattr(exc, "reason", exc)))
                retry.add(ref)
        return retry

    async def _sync_one(self, cached: Cached, now: datetime.datetime) -> None:
        res = cached.resource
        w = self._written.get(res.uid)
        if w is not None and cached.resource_version == w.resource_version:
            w.caught_up = True
        lagging = w is not None and not w.caught_up
        current = w.status if w is not None and lagging else cached.status
        old_conditions = tuple(c for c in current.get("conditions") or ()
                               if isinstance(c, Mapping))
        resource = st.Resource(res.ref, res.uid, res.generation, old_conditions)
        reports, ready, inactive = self.store.inputs(res.ref)
        desired = st.compute_status(resource, reports, st.rfc3339(now), ready, inactive)
        if w is not None and w.desired == desired and (
                lagging or cached.resource_version == w.resource_version):
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
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (
                    404, 408, 409, 429):
                ERRORS.labels("patch").inc()
                log.error("the API server rejected our status; not retrying until it changes",
                          resource=str(ref), status=exc.status, error=str(exc.body)[:500])
                self._rejected[res.uid] = desired
                return
            raise
        self._rejected.pop(res.uid, None)
        meta = obj.get("metadata") or {}
        stored = obj.get("status")
        self._written[res.uid] = Written(str(meta.get("resourceVersion", "")), desired,
                                         dict(stored) if isinstance(stored, Mapping) else {})
        STATUS_WRITES.labels(ref.kind).inc()
        log.info("status written", resource=str(ref), ready=desired["ready"],
                 generation=res.generation)
        for t in st.transitions(old_conditions, desired["conditions"]):
            await self._post_event(res, t, now)

    def _patch_status(self, ref: ResourceRef, patch: dict[str, Any]) -> dict[str, Any]:
        plural = PLURALS[ref.kind]
        body = {"status": patch}
        if ref.namespace:
            obj = self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, ref.namespace, plural, ref.name, body, _content_type=MERGE_PATCH)
        else:
            obj = self.api.patch_cluster_custom_object_status(
                GROUP, VERSION, plural, ref.name, body, _content_type=MERGE_PATCH)
        return cast(dict[str, Any], obj)

    async def _post_event(self, res: st.Resource, t: st.Transition,
                          now: datetime.datetime) -> None:
        namespace = res.ref.namespace or CLUSTER_EVENT_NAMESPACE
        regarding: dict[str, Any] = {"apiVersion": API_VERSION, "kind": res.ref.kind,
                                     "name": res.ref.name, "uid": res.uid}
        if res.ref.namespace:
            regarding["namespace"] = res.ref.namespace
        event = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            # Named like client-go's recorder does (generateName would end in "." or "-").
            "metadata": {"name": f"{res.ref.name[:230]}.{time.time_ns():x}",
                         "namespace": namespace},
            "eventTime": st.micro_time(now),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.identity[:128],
            "action": "Aggregate",
            "type": t.type, "reason": t.reason, "note": t.message[:1024],
            "regarding": regarding,
        }
        try:
            await asyncio.to_thread(self.api.create_namespaced_custom_object,
                                    "events.k8s.io", "v1", namespace, "events", event)
        except (ApiException, OSError) as exc:
            ERRORS.labels("event").inc()
            log.warning("cannot post event", resource=str(res.ref), reason=t.reason,
                        error=str(getattr(exc, "reason", exc)),
                        detail=str(getattr(exc, "body", ""))[:500])
            return
        EVENTS_POSTED.labels(t.type, t.reason).inc()
        log.info("event posted", resource=str(res.ref), type=t.type, reason=t.reason)

    async def _active(self) -> bool:
        """Double-check kopf's peering verdict before writing (kopf pauses its watches, not
        our task): a standby replica must never write."""
        if not self.peering:
            return True
        try:
            obj = await asyncio.to_thread(self.api.get_cluster_custom_object, PEERING_GROUP,
                                          PEERING_VERSION, PEERING_PLURAL, self.peering_name)
        except ApiException as exc:
            if exc.status == 404:
                return True  # no peering object: kopf does not pause either
            ERRORS.labels("peering").inc()
            return False
        except OSError:
            ERRORS.labels("peering").inc()
            return False
        return is_active_peer(cast(Mapping[str, Any], obj).get("status"), self.identity,
                              self.priority, datetime.datetime.now(datetime.UTC))

    async def explain_peering_wait(self, interval: float = 5.0) -> None:
        """kopf waits silently, forever, for a missing peering object: say once what we wait
        for and how to proceed, and once when it appears."""
        said = False
        while True:
            try:
                await asyncio.to_thread(self.api.get_cluster_custom_object, PEERING_GROUP,
                                        PEERING_VERSION, PEERING_PLURAL, self.peering_name)
            except ApiException as exc:
                if exc.status == 404 and not said:
                    log.warning(
                        f"waiting for the ClusterKopfPeering {self.peering_name!r}: peering is "
                        "on and that object does not exist, so nothing is processed. The helm "
                        "chart creates it; else apply crds/clusterkopfpeerings.kopf.dev.yaml and "
                        f"create it (kubectl create -f - with kind ClusterKopfPeering, name "
                        f"{self.peering_name}), or run a single replica with --no-peering")
                    said = True
            except OSError:
                pass  # the API is unreachable: kopf says so itself
            else:
                if said:
                    log.info("ClusterKopfPeering found", name=self.peering_name)
                return
            await asyncio.sleep(interval)

    async def prune(self) -> None:
        """Forget objects that no longer exist but were not seen deleted."""
        started = time.monotonic()
        for kind, plural in PLURALS.items():
            uids = await asyncio.to_thread(self._list_metadata, plural, "uid")
            for ref, cached in list(self.store.resources.items()):
                if ref.kind == kind and cached.seen < started and cached.resource.uid not in uids:
                    log.info("forgetting a resource deleted while unwatched", resource=str(ref))
                    self._mark(self.store.drop_resource(ref, cached.resource.uid) or ())
                    self._written.pop(cached.resource.uid, None)
        names = await asyncio.to_thread(self._list_metadata, NODESTATES, "name")
        for node, seen in list(self.store.node_seen.items()):
            if seen < started and node not in names:
                log.info("forgetting a NodeState deleted while unwatched", node=node)
                self._mark(self.store.drop_node(node))

    def _list_metadata(self, plural: str, key: str) -> set[str]:
        out: set[str] = set()
        token: str | None = None
        scope = self.namespace_scope if plural == PLURALS[PORT_PUBLICATION] else None
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_headers": {"Accept": METADATA_LIST}}
            if token:
                kwargs["_continue"] = token
            if scope:
                page = self.api.list_namespaced_custom_object(GROUP, VERSION, scope, plural,
                                                              **kwargs)
            else:
                page = self.api.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
            page = cast(Mapping[str, Any], page)
            out.update(str((i.get("metadata") or {}).get(key, "")) for i in page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return out

    # running ------------------------------------------------------------------------------

    def settings(self) -> kopf.OperatorSettings:
        s = kopf_settings()
        s.persistence.progress_storage = NoProgressStorage()
        s.persistence.diffbase_storage = NoDiffBaseStorage()
        s.peering.name = self.peering_name
        s.peering.mandatory = self.peering
        s.peering.standalone = not self.peering
        s.peering.priority = self.priority
        return s

    async def run(self, *, liveness_endpoint: str | None = None) -> None:
        settings = self.settings()

        @kopf.on.startup(registry=self.registry)
        async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            # kopf derives the peering scope from `clusterwide`; ours is always cluster-wide
            # (one active controller for the whole cluster), even when watching one namespace.
            settings.peering.clusterwide = True

        # Started before kopf, so kopf's shutdown leaves them to us (it only reaps its own).
        tasks = [asyncio.create_task(self.reconcile_forever(), name="bridgeport reconciler"),
                 asyncio.create_task(self.resync_forever(), name="bridgeport resync"),
                 asyncio.create_task(self._expect_listing(), name="bridgeport first listing")]
        if self.peering:
            tasks.append(asyncio.create_task(self.explain_peering_wait(), name="peering check"))
        log.info("controller starting", identity=self.identity, peering=self.peering,
                 priority=self.priority, namespace=self.namespace_scope or "(all)")
        try:
            await kopf.operator(
                registry=self.registry, settings=settings,
                identity=cast(Any, self.identity),
                clusterwide=not self.namespace_scope,
                namespaces=[self.namespace_scope] if self.namespace_scope else (),
                liveness_endpoint=liveness_endpoint,
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """The parts we keep, copied out of kopf's live view of the object."""
    meta = {k: body.metadata.get(k) for k in _META_KEYS if k in body.metadata}
    return copy.deepcopy({"kind": body.get("kind"), "metadata": meta,
                          "spec": dict(body.spec), "status": dict(body.status)})


_META_KEYS = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp",
              "deletionTimestamp")


def run_controller(*, namespace_scope: str | None = None,
                   liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz",
                   metrics_port: int | None = None, peering: bool = True,
                   peering_name: str = PEERING_NAME) -> int:
    """The `bridgeport controller` process: blocks until SIGTERM/SIGINT, then returns 0."""
    from bridgeport.metrics import serve

    serve(metrics_port or 0, METRICS)  # raises PortTaken, which the CLI prints as one line
    controller = Controller(namespace_scope=namespace_scope, peering=peering,
                            peering_name=peering_name, api=load_api())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(controller.run(liveness_endpoint=liveness_endpoint))
    log.info("controller stopped")
    return 0
