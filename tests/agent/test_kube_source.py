"""The agent's Kubernetes source (kube/source.py, listwatch.py) against the real API server.

Scenarios (the source runs in-process with tiny pages and watch timeouts of a few seconds):
- paging: more publications than one page arrive in full, over several pages; only those that
  select the node are kept as specs, the rest as stubs
- watch timeouts: the server ends the watch every few seconds; adds, changes and deletes made
  after several renewals still arrive, and status-only writes wake nobody
- 410 Gone: a watch resumed from a resourceVersion the server no longer has lists again; what
  was deleted while the source was away is swept, what was created arrives
- node labels: a change that makes stubs match relists the publications and switches the
  snapshot to the new labels only with their specs; a change no stub matches switches at once,
  without a relist
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes import client

from bridgeport.core.specs import PORT_PUBLICATION, InvalidResource
from bridgeport.kube.cache import NODE
from bridgeport.kube.listwatch import Timing
from bridgeport.kube.source import KubeSource
from tests.harness.apiserver import Kubectl

pytestmark = pytest.mark.apiserver

GROUP, VERSION, PLURAL = "bridgeport.io", "v1alpha1", "portpublications"
FAST = Timing(page=4, watch_timeout=(2, 3), read_slack=10.0, backoff=(0.2, 0.5, 1.0))


def publication(name: str, ns: str, zone: str | None = None, port: int = 8080) -> dict[str, Any]:
    spec: dict[str, Any] = {"hostPort": port, "target": {"address": "10.0.0.2", "port": 80}}
    if zone:
        spec["nodeSelector"] = {"matchLabels": {"zone": zone}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PortPublication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def mine(source: KubeSource, ns: str) -> dict[str, Any]:
    """name -> resource of the snapshot's publications in namespace `ns`."""
    snap = source.snapshot()
    out: dict[str, Any] = {}
    for r in snap.resources if snap is not None else ():
        ref = r.ref if isinstance(r, InvalidResource) else r.meta.ref
        if ref is not None and ref.kind == PORT_PUBLICATION and ref.namespace == ns:
            out[ref.name] = r
    return out


async def until(check: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def run_source(
    kube_client: Any,
    kubectl: Kubectl,
    labels: dict[str, str],
    body: Callable[[KubeSource, list[float]], Awaitable[None]],
) -> None:
    """Run a source for a new Node with `labels` while `body` runs; body gets the source (its
    node_name is the Node's) and a list that grows by one entry per wake-up. The Node is
    deleted afterwards."""
    node = f"src-{uuid.uuid4().hex[:8]}"
    kubectl.ok(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}}
        ),
    )

    async def main() -> None:
        source = KubeSource(node, timing=FAST, api=kube_client)
        wakes: list[float] = []
        task = asyncio.create_task(source.run(lambda: wakes.append(time.monotonic())))
        try:
            await until(lambda: source.snapshot() is not None or task.done(), "a snapshot")
            assert not task.done(), task.result()
            await body(source, wakes)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        kubectl("delete", "node", node, "--ignore-not-found")


def create(co: client.CustomObjectsApi, ns: str, *docs: dict[str, Any]) -> None:
    for doc in docs:
        co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)


async def patch(
    co: client.CustomObjectsApi, ns: str, name: str, body: dict[str, Any], status: bool = False
) -> None:
    call = co.patch_namespaced_custom_object_status if status else co.patch_namespaced_custom_object
    await asyncio.to_thread(call, GROUP, VERSION, ns, PLURAL, name, body)


async def delete(co: client.CustomObjectsApi, ns: str, name: str) -> None:
    await asyncio.to_thread(co.delete_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name)


def test_paged_listing_keeps_specs_only_for_what_selects_the_node(
    kube_client: Any, crds: Any, kubectl: Kubectl, namespace: str
) -> None:
    co = client.CustomObjectsApi(kube_client)
    create(
        co,
        namespace,
        *(publication(f"a{i}", namespace, "a", 8000 + i) for i in range(6)),
        *(publication(f"b{i}", namespace, "b", 9000 + i) for i in range(13)),
    )

    async def body(source: KubeSource, wakes: list[float]) -> None:
        assert set(mine(source, namespace)) == {f"a{i}" for i in range(6)}
        lw = source.watches[PORT_PUBLICATION]
        assert lw.lists == 1 and lw.pages >= 19 / 4  # every page of one listing
        with source.lock:
            stubs = {k for k in source.cache.stubs if k[0] == namespace}
        assert stubs == {(namespace, f"b{i}") for i in range(13)}
        snap = source.snapshot()
        assert snap is not None and snap.node_labels == {"zone": "a"}
        assert source.node_uid

    run_source(kube_client, kubectl, {"zone": "a"}, body)


def test_events_arrive_across_watch_timeouts(
    kube_client: Any, crds: Any, kubectl: Kubectl, namespace: str
) -> None:
    co = client.CustomObjectsApi(kube_client)
    create(
        co,
        namespace,
        publication("keep", namespace),
        publication("gone", namespace, "a"),
        publication("other", namespace, "b"),
    )

    async def body(source: KubeSource, wakes: list[float]) -> None:
        assert set(mine(source, namespace)) == {"keep", "gone"}
        lw = source.watches[PORT_PUBLICATION]
        await asyncio.sleep(7)  # two or three watch timeouts (2-3 s) go by
        assert lw.lists == 1  # renewed from its resourceVersion, never relisted
        await asyncio.to_thread(create, co, namespace, publication("new", namespace, "a"))
        await delete(co, namespace, "gone")
        await patch(co, namespace, "keep", {"spec": {"hostPort": 8181}})
        await until(
            lambda: (
                set(mine(source, namespace)) == {"keep", "new"}
                and mine(source, namespace)["keep"].host_port == 8181
            ),
            "the changes",
        )
        # Status writes (the controller's) and changes of a stub wake nobody.
        await asyncio.sleep(1)
        before = len(wakes)
        await patch(co, namespace, "keep", {"status": {"ready": "1/1"}}, status=True)
        await patch(co, namespace, "other", {"spec": {"hostPort": 7000}})
        await asyncio.to_thread(create, co, namespace, publication("o2", namespace, "b"))
        await until(lambda: (namespace, "o2") in source.cache.stubs, "the stub o2")
        await asyncio.sleep(0.5)
        assert len(wakes) == before

    run_source(kube_client, kubectl, {"zone": "a"}, body)


def test_410_gone_lists_again_and_sweeps_what_was_deleted(
    kube_client: Any, crds: Any, kubectl: Kubectl, namespace: str
) -> None:
    co = client.CustomObjectsApi(kube_client)
    create(co, namespace, publication("stays", namespace), publication("deleted", namespace))

    async def body(source: KubeSource, wakes: list[float]) -> None:
        assert set(mine(source, namespace)) == {"stays", "deleted"}
        lw = source.watches[PORT_PUBLICATION]
        # The source goes away (its watch stops); meanwhile one object is deleted and one
        # created, and it comes back resuming from a resourceVersion the server no
        # longer serves (what a long disconnection or an etcd compaction leaves).
        lw.stop()
        lw.join(30)
        await delete(co, namespace, "deleted")
        await asyncio.to_thread(create, co, namespace, publication("created", namespace))
        lists = lw.lists
        lw._stop.clear()
        lw.resource_version = "1"
        lw.start()
        await until(lambda: lw.lists > lists, "a relist after 410 Gone")
        await until(
            lambda: set(mine(source, namespace)) == {"stays", "created"}, "the relisted state"
        )
        assert wakes  # the relist's changes woke the agent

    run_source(kube_client, kubectl, {}, body)


def test_node_label_changes(kube_client: Any, crds: Any, kubectl: Kubectl, namespace: str) -> None:
    co = client.CustomObjectsApi(kube_client)
    create(
        co,
        namespace,
        publication("a", namespace, "a", 8001),
        publication("b", namespace, "b", 8002),
        publication("all", namespace, None, 8003),
    )

    async def body(source: KubeSource, wakes: list[float]) -> None:
        lw = source.watches[PORT_PUBLICATION]
        assert set(mine(source, namespace)) == {"a", "all"}
        # zone=b: stub "b" matches, so the publications are listed again for its spec;
        # the snapshot switches only with it.
        await asyncio.to_thread(
            kubectl.ok, "label", "node", source.node_name, "--overwrite", "zone=b"
        )
        await until(lambda: set(mine(source, namespace)) == {"b", "all"}, "b selected")
        snap = source.snapshot()
        assert snap is not None and snap.node_labels == {"zone": "b"}
        assert lw.lists == 2
        assert mine(source, namespace)["b"].host_port == 8002
        # zone=c: no stub matches, so no relist; "b" becomes a stub.
        await asyncio.to_thread(
            kubectl.ok, "label", "node", source.node_name, "--overwrite", "zone=c"
        )
        await until(
            lambda: (snap := source.snapshot()) is not None and snap.node_labels == {"zone": "c"},
            "zone=c",
        )
        assert set(mine(source, namespace)) == {"all"}
        assert lw.lists == 2
        with source.lock:
            assert {(namespace, "a"), (namespace, "b")} <= set(source.cache.stubs)
        # Kubelet-style status updates of the Node change no label: nothing happens.
        before = len(wakes)
        await asyncio.to_thread(kubectl.ok, "annotate", "node", source.node_name, "x=y")
        await until(lambda: source.watches[NODE].resource_version is not None, "node")
        await asyncio.sleep(1)
        assert len(wakes) == before

    run_source(kube_client, kubectl, {"zone": "a"}, body)
