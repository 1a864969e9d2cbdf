"""The agent's Kubernetes source: both kinds and this node's Node object, watched by kopf.

N agents watch the same objects, so nothing here writes to them: no finalizers, no
annotations, no status; only `@kopf.on.event` handlers that keep the parsed specs (no
`@kopf.index`: kopf gates indexed kinds with one toggle per object, quadratic in a listing).
The snapshot is complete once every object of a metadata listing made at start has arrived;
before that the agent deletes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bridgeport.core import specs
from bridgeport.core.source import Snapshot, SourceError
from bridgeport.core.specs import GROUP, PLURALS, VERSION
from bridgeport.kube.api import kopf_settings

log = structlog.get_logger(__name__)
NODE_WAIT_WARNING = 15.0
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def _listing(api: Any, node_name: str) -> set[str]:
    """uids of every PortPublication and BridgeNetwork (metadata only, paged), and "node" if
    this node's Node exists."""
    co = client.CustomObjectsApi(api)
    out: set[str] = set()
    for plural in PLURALS.values():
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_headers": {"Accept": METADATA_LIST}}
            if token:
                kwargs["_continue"] = token
            page = cast(Mapping[str, Any],
                        co.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs))
            out.update(str((i.get("metadata") or {}).get("uid", ""))
                       for i in page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                break
    nodes = client.CoreV1Api(api).list_node(field_selector=f"metadata.name={node_name}")
    if nodes.items:
        out.add("node")
    return out


def _document(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The parts of an object the parser reads (status and managed fields are never needed)."""
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": kind,
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "generation",
                                              "creationTimestamp", "uid") if k in meta},
        "spec": body.get("spec"),
    }


def parse_body(body: Mapping[str, Any], kind: str) -> specs.ParseResult:
    """An event body as a resource; whatever is in it, an InvalidResource rather than an
    exception (an exception would stop kopf's indexing of that object)."""
    try:
        return specs.parse(_document(body, kind))
    except Exception as exc:
        log.exception("cannot parse object", kind=kind)
        return specs.InvalidResource(None, (f"{kind}: cannot be parsed: {type(exc).__name__}",))


class KubeSource:
    def __init__(self, node_name: str, *, liveness_endpoint: str | None = None) -> None:
        self.node_name = node_name
        self.liveness_endpoint = liveness_endpoint
        self.registry = kopf.OperatorRegistry()
        self._objects: dict[str, specs.ParseResult] = {}  # by uid
        self._generations: dict[str, int] = {}
        self._node: dict[str, Any] | None = None  # {"labels", "uid"} of this node
        self._node_labels: dict[str, str] | None = None
        self._expected: set[str] | None = None  # listed at start and not seen yet
        self._complete = False
        self._changed: Callable[[], None] = lambda: None
        self.node_uid: str | None = None
        self._register()

    def snapshot(self) -> Snapshot | None:
        if not self._complete:
            return None
        labels: dict[str, str] = {}
        if self._node is not None:
            labels = dict(self._node["labels"])
            self.node_uid = self._node["uid"]
        return Snapshot(tuple(self._objects.values()), node_labels=labels)

    def _register(self) -> None:
        reg = self.registry
        # A private registry has none of kopf's default handlers: log in like kubectl does
        # (in-cluster service account, else KUBECONFIG).
        kopf.on.login(registry=reg)(kopf.login_via_client)
        # Event handlers only, no kopf indexes: kopf gates indexed kinds with one toggle per
        # object, which is quadratic in the objects of a listing (100,000 never finish).
        for kind, plural in PLURALS.items():
            kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-event", registry=reg)(
                self._recorder(kind))
        kopf.on.event("", "v1", "nodes", id="node-event", registry=reg, field="metadata.name",
                      value=self.node_name)(self._on_node)

    def _recorder(self, kind: str) -> Callable[..., Any]:
        async def record(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
            uid = body.metadata.uid or ""
            generation = body.metadata.get("generation") or 0
            if self._expected is not None:
                self._expected.discard(uid)
            if event.get("type") == "DELETED":
                self._objects.pop(uid, None)
                self._generations.pop(uid, None)
            elif self._generations.get(uid) == generation and uid in self._objects:
                return  # a status-only change (ours or the controller's): nothing to do
            else:
                self._objects[uid] = parse_body(body, kind)
                self._generations[uid] = generation
            self._notify()
        return record

    async def _on_node(self, event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        if self._expected is not None:
            self._expected.discard("node")
        if event.get("type") == "DELETED":
            self._node = None
        else:
            labels = dict(body.metadata.labels or {})
            self._node = {"labels": labels, "uid": body.metadata.uid}
            if labels == self._node_labels and self._complete:
                return  # kubelet status updates: only labels matter to the plan
            self._node_labels = labels
        self._notify()

    def _notify(self) -> None:
        if not self._complete and self._expected is not None and not self._expected:
            log.info("first complete listing received", resources=len(self._objects))
            self._complete = True
        if self._complete:
            self._changed()

    async def _expect_listing(self) -> None:
        """The first complete view: every object of a metadata listing made at start (made
        again while some never arrive: they were deleted meanwhile)."""
        from bridgeport.kube.api import load_api

        api = await asyncio.to_thread(load_api)
        delay = 5.0
        while not self._complete:
            try:
                expected = await asyncio.to_thread(_listing, api, self.node_name)
            except (ApiException, OSError) as exc:
                log.warning("cannot list for the first complete view; retrying",
                            error=str(getattr(exc, "reason", exc)))
                await asyncio.sleep(5.0)
                continue
            seen = set(self._objects) | ({"node"} if self._node is not None else set())
            self._expected = expected - seen
            self._notify()
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)

    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        settings = kopf_settings()  # the data plane does not need the API: retry forever
        # kopf lists each kind in one unpaged request: 100,000 publications take longer than
        # 30 s to list (and the watch has its own timeouts).
        settings.networking.request_timeout = 300
        waiter = asyncio.create_task(self._warn_if_no_node())
        lister = asyncio.create_task(self._expect_listing())
        try:
            await kopf.operator(registry=self.registry, settings=settings, standalone=True,
                                clusterwide=True, liveness_endpoint=self.liveness_endpoint)
        except kopf.LoginError as exc:
            raise SourceError(
                f"cannot log in to the Kubernetes API ({exc}); in a pod the service account is "
                "used, elsewhere KUBECONFIG or ~/.kube/config") from None
        finally:
            waiter.cancel()
            lister.cancel()

    async def _warn_if_no_node(self) -> None:
        await asyncio.sleep(NODE_WAIT_WARNING)
        if not self._complete:
            log.warning("no complete listing yet, so nothing is programmed: check that the API "
                        "server is reachable, that the credentials work (kopf logs login "
                        "failures), and that NODE_NAME names an existing Node",
                        node=self.node_name)
