"""The agent's Kubernetes source: kopf indexes of both kinds and of this node's Node object.

N agents watch the same objects, so nothing here writes to them: no finalizers, no
annotations, no status; only `@kopf.index` (the cache) and `@kopf.on.event` (mark dirty).
kopf calls event handlers only after every index has finished its first listing, so the first
event is the signal that a complete snapshot exists; before it the agent deletes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import structlog

from bridgeport.core import specs
from bridgeport.core.source import Snapshot, SourceError
from bridgeport.core.specs import GROUP, PLURALS, VERSION
from bridgeport.kube.api import kopf_settings

log = structlog.get_logger(__name__)
NODE_WAIT_WARNING = 15.0


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
        self._indexes: dict[str, Any] = {}
        self._generations: dict[str, int] = {}
        self._node_labels: dict[str, str] | None = None
        self._complete = False
        self._changed: Callable[[], None] = lambda: None
        self.node_uid: str | None = None
        self._register()

    def snapshot(self) -> Snapshot | None:
        if not self._complete:
            return None
        resources: list[specs.ParseResult] = []
        for name in PLURALS.values():
            for store in self._indexes[name].values():
                resources.extend(store)
        labels: dict[str, str] = {}
        for node in self._indexes["node"].get(None, ()):
            labels = dict(node["labels"])
            self.node_uid = node["uid"]
        return Snapshot(tuple(resources), node_labels=labels)

    def _register(self) -> None:
        reg = self.registry
        # A private registry has none of kopf's default handlers: log in like kubectl does
        # (in-cluster service account, else KUBECONFIG).
        kopf.on.login(registry=reg)(kopf.login_via_client)
        for kind, plural in PLURALS.items():
            kopf.index(GROUP, VERSION, plural, id=plural, registry=reg)(
                self._indexer(kind))
            kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-event", registry=reg)(
                self._on_event)
        name = self.node_name
        kopf.index("", "v1", "nodes", id="node", registry=reg, field="metadata.name",
                   value=name)(self._index_node)
        kopf.on.event("", "v1", "nodes", id="node-event", registry=reg, field="metadata.name",
                      value=name)(self._on_event)

    @staticmethod
    def _indexer(kind: str) -> Callable[..., Any]:
        def index(body: kopf.Body, **_: Any) -> dict[None, specs.ParseResult]:
            return {None: parse_body(body, kind)}
        return index

    @staticmethod
    def _index_node(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
        return {None: {"labels": dict(body.metadata.labels or {}), "uid": body.metadata.uid}}

    async def _on_event(self, event: Mapping[str, Any], body: kopf.Body,
                        **kwargs: Any) -> None:
        for key in (*PLURALS.values(), "node"):
            self._indexes[key] = kwargs[key]
        uid = body.metadata.uid or ""
        generation = body.metadata.get("generation") or 0
        kind = body.get("kind")
        if event.get("type") == "DELETED":
            self._generations.pop(uid, None)
        elif kind == "Node":
            labels = dict(body.metadata.labels or {})
            if labels == self._node_labels and self._complete:
                return  # kubelet status updates: only labels matter to the plan
            self._node_labels = labels
        elif self._generations.get(uid) == generation and self._complete:
            return  # a status-only change (ours or the controller's): nothing to do
        else:
            self._generations[uid] = generation
        if not self._complete:
            log.info("first complete listing received")
        self._complete = True
        self._changed()

    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        settings = kopf_settings()  # the data plane does not need the API: retry forever
        settings.networking.request_timeout = 30
        waiter = asyncio.create_task(self._warn_if_no_node())
        try:
            await kopf.operator(registry=self.registry, settings=settings, standalone=True,
                                clusterwide=True, liveness_endpoint=self.liveness_endpoint)
        except kopf.LoginError as exc:
            raise SourceError(
                f"cannot log in to the Kubernetes API ({exc}); in a pod the service account is "
                "used, elsewhere KUBECONFIG or ~/.kube/config") from None
        finally:
            waiter.cancel()

    async def _warn_if_no_node(self) -> None:
        await asyncio.sleep(NODE_WAIT_WARNING)
        if not self._complete:
            log.warning("no complete listing yet, so nothing is programmed: check that the API "
                        "server is reachable, that the credentials work (kopf logs login "
                        "failures), and that NODE_NAME names an existing Node",
                        node=self.node_name)
