"""The agent's Kubernetes source: both kinds and this node's Node, each by a list-watch of
our own (kube/listwatch.py), into a cache that keeps only what can select this node
(kube/cache.py).

N agents watch the same objects, so nothing here writes to them. No kopf: its unpaged lists
decoded 100,000 objects at once and it kept a worker per object; the agent needs none of its
handler machinery (the controller keeps it). The Node is listed first, so the publications are
sorted into specs and stubs against its labels from the start. The snapshot is complete once
every collection has been listed in full; before that the agent deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import structlog
from kubernetes import client
from kubernetes.config import ConfigException

from bridgeport.core import specs
from bridgeport.core.source import Snapshot, SourceError
from bridgeport.core.specs import BRIDGE_NETWORK, GROUP, PLURALS, PORT_PUBLICATION, VERSION
from bridgeport.kube import health
from bridgeport.kube.cache import NODE, ClusterCache, document
from bridgeport.kube.listwatch import ListWatch, Timing

log = structlog.get_logger(__name__)
NODE_WAIT_WARNING = 15.0


def parse_body(body: Mapping[str, Any], kind: str) -> specs.ParseResult:
    """An object as a resource; whatever is in it, an InvalidResource rather than an
    exception (an exception would stop the watch of its whole collection)."""
    try:
        return specs.parse(document(body, kind))
    except Exception as exc:
        log.exception("cannot parse object", kind=kind)
        return specs.InvalidResource(None, (f"{kind}: cannot be parsed: {type(exc).__name__}",))


class _Feed:
    """One collection's list-watch into the shared cache (called from its thread)."""

    def __init__(self, source: KubeSource, kind: str) -> None:
        self.source, self.kind = source, kind

    def begin(self) -> None:
        with self.source.lock:
            self.source.cache.begin_list(self.kind)

    def put(self, obj: Mapping[str, Any]) -> None:
        with self.source.lock:
            changed = self.source.cache.put(self.kind, obj)
        self.source.after(self.kind, changed)

    def delete(self, obj: Mapping[str, Any]) -> None:
        with self.source.lock:
            changed = self.source.cache.delete(self.kind, obj)
        self.source.after(self.kind, changed)

    def end(self) -> None:
        with self.source.lock:
            complete = self.source.cache.complete
            changed = self.source.cache.end_list(self.kind)
            if self.source.cache.complete and not complete:
                log.info("first complete listing received", **self.source.cache.counts())
        self.source.after(self.kind, changed, listed=True)


class KubeSource:
    def __init__(
        self,
        node_name: str,
        *,
        liveness_endpoint: str | None = None,
        timing: Timing | None = None,
        api: client.ApiClient | None = None,
    ) -> None:
        self.node_name = node_name
        self.liveness_endpoint = liveness_endpoint
        self.timing = timing or Timing()
        self.cache = ClusterCache(parse=parse_body)
        self.lock = threading.Lock()  # the watch threads write the cache, the agent reads it
        self.watches: dict[str, ListWatch] = {}
        self._api = api
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: Callable[[], None] = lambda: None
        self._node_listed = asyncio.Event()

    @property
    def node_uid(self) -> str | None:
        return self.cache.node_uid

    def snapshot(self) -> Snapshot | None:
        with self.lock:
            return self.cache.snapshot()

    def after(self, kind: str, changed: bool, listed: bool = False) -> None:
        """From a watch thread: wake the agent, and relist publications that new node labels
        may select."""
        with self.lock:
            relist = (kind == NODE or listed) and self.cache.ask_relist()
        if relist:
            log.info(
                "node labels changed; listing publications again for their specs",
                node=self.node_name,
            )
            self.watches[PORT_PUBLICATION].relist()
        loop = self._loop
        if loop is None:
            return
        if listed and kind == NODE:
            loop.call_soon_threadsafe(self._node_listed.set)
        if changed:
            loop.call_soon_threadsafe(self._changed)

    def _collections(self, api: client.ApiClient) -> dict[str, ListWatch]:
        co = client.CustomObjectsApi(api)
        calls: dict[str, Callable[..., Any]] = {
            NODE: partial(
                client.CoreV1Api(api).list_node, field_selector=f"metadata.name={self.node_name}"
            ),
            BRIDGE_NETWORK: partial(
                co.list_cluster_custom_object, GROUP, VERSION, PLURALS[BRIDGE_NETWORK]
            ),
            PORT_PUBLICATION: partial(
                co.list_cluster_custom_object, GROUP, VERSION, PLURALS[PORT_PUBLICATION]
            ),
        }
        return {
            kind: ListWatch(kind, call, _Feed(self, kind), self.timing)
            for kind, call in calls.items()
        }

    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._loop = asyncio.get_running_loop()
        self._node_listed = asyncio.Event()
        api = self._api
        if api is None:
            from bridgeport.kube.api import load_api

            try:
                api = await asyncio.to_thread(load_api)
            except (ConfigException, OSError) as exc:
                raise SourceError(
                    f"cannot load Kubernetes credentials ({exc}); in a pod the service account "
                    "is used, elsewhere KUBECONFIG or ~/.kube/config"
                ) from None
        server = None
        if self.liveness_endpoint:
            try:
                server = await health.serve(self.liveness_endpoint)
            except OSError as exc:
                raise SourceError(
                    f"--health-port: cannot serve {self.liveness_endpoint}: {exc.strerror or exc}"
                ) from None
        self.watches = self._collections(api)
        waiter = asyncio.create_task(self._warn_if_incomplete())
        try:
            # The node first: publications are sorted into specs and stubs by its labels.
            self.watches[NODE].start()
            await self._node_listed.wait()
            self.watches[BRIDGE_NETWORK].start()
            self.watches[PORT_PUBLICATION].start()
            await asyncio.Event().wait()  # until cancelled
        finally:
            waiter.cancel()
            for watch in self.watches.values():
                watch.stop()
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await server.wait_closed()

    async def _warn_if_incomplete(self) -> None:
        await asyncio.sleep(NODE_WAIT_WARNING)
        if not self.cache.complete:
            log.warning(
                "no complete listing yet, so nothing is programmed: check that the API "
                "server is reachable, that the credentials work, and that NODE_NAME "
                "names an existing Node",
                node=self.node_name,
            )
