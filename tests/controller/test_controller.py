"""The controller against a real API server, with NodeStates written by the test (as agents do).

One controller process (peering on, ClusterKopfPeering installed) serves every test; each test
uses its own namespace and node names. Scenarios:
- two nodes Applied at generation 1: Ready True, nodes 2/2, `kubectl get pp` READY 2/2, one
  Normal Ready Event
- a node reports Conflicted naming the winner: Conflicted True with that message, exactly one
  Warning Event however many reconciles follow; resolving it posts ConflictResolved
- a spec change (generation 2): Ready False (NodesPending) until the reports catch up, no Warning
- an Inactive node is not counted
- 20 problem nodes: problemNodes holds 16, sorted, the Ready message gives the total
- a deleted and recreated resource (same name, new uid) does not inherit the old reports
- a BridgeNetwork (cluster-scoped): status written, Event in "default"
- nothing changed (agents' heartbeats, labels): resourceVersion stays put; a restarted
  controller rewrites nothing and posts no Event again
- two replicas: one is paused by kopf peering, statuses and Events are written once
- namespace_scope: only that namespace's publications get a status
- the resync's prune forgets objects that were deleted while unwatched
- the peering object carries the controller's keep-alive
- (no API server) the store ignores late events of a deleted incarnation and marks only
  changed reports; the standby rule matches kopf's
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bridgeport.core.specs import API_VERSION as API
from bridgeport.core.specs import GROUP, VERSION

pytestmark = pytest.mark.apiserver

T = TypeVar("T")

LAUNCH = (
    "import sys; from bridgeport import log; log.setup('DEBUG', json=True); "
    "from bridgeport.kube.controller import ControllerSettings, run_controller; "
    "sys.exit(run_controller(ControllerSettings(liveness_endpoint=None, {args})))"
)


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll until fn() returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class ControllerProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, args: str = "peering=True") -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.offset = 0

    def start(self, *ready: str) -> None:
        """Start, and wait for a log line saying it is running (by default: it has its first
        complete listing)."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH.format(args=self.args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        try:
            wait_for(
                lambda: (
                    any(line in self.log() for line in ready or ("first complete listing",))
                    or self.proc is None
                    or self.proc.poll() is not None
                ),
                "controller start",
            )
            assert self.proc.poll() is None, self.tail()
        except BaseException:
            self.stop()  # never leave a controller behind
            raise

    def log(self) -> str:
        """The log of the current run."""
        return self.log_path.read_text()[self.offset :] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """The API calls a test needs: objects, NodeStates as an agent writes them, Events."""

    def __init__(self, api: Any, kubectl: Any) -> None:
        from kubernetes import client

        self.co: Any = client.CustomObjectsApi(api)
        self.kubectl = kubectl
        self.nodes: set[str] = set()

    # publications and networks
    def create_pp(self, ns: str, name: str, port: int = 8080) -> dict[str, Any]:
        body = {
            "apiVersion": API,
            "kind": "PortPublication",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hostPort": port, "target": {"address": "10.88.0.2", "port": 80}},
        }
        return dict(
            self.co.create_namespaced_custom_object(GROUP, VERSION, ns, "portpublications", body)
        )

    def pp(self, ns: str, name: str) -> dict[str, Any]:
        return dict(
            self.co.get_namespaced_custom_object(GROUP, VERSION, ns, "portpublications", name)
        )

    def patch_pp(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.co.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                "portpublications",
                name,
                patch,
                _content_type="application/merge-patch+json",
            )
        )

    def delete_pp(self, ns: str, name: str) -> None:
        self.co.delete_namespaced_custom_object(GROUP, VERSION, ns, "portpublications", name)

    # NodeStates, written like an agent: create the object, then its status subresource
    def report(
        self, node: str, *entries: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        if node not in self.nodes:
            body = {
                "apiVersion": API,
                "kind": "NodeState",
                "metadata": {"name": node},
                "spec": {"nodeName": node},
            }
            try:
                self.co.create_cluster_custom_object(GROUP, VERSION, "nodestates", body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.nodes.add(node)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["state"]] = counts.get(e["state"], 0) + 1
        status = {
            "agentVersion": "0.1.0",
            "lastSync": now,
            "tableDigest": "ab12",
            "counts": counts,
            "errors": [],
            "resources": list(entries),
            **(extra or {}),
        }
        self.co.patch_cluster_custom_object_status(
            GROUP,
            VERSION,
            "nodestates",
            node,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    def report_summary(
        self,
        node: str,
        labels: dict[str, str],
        applied: list[tuple[dict[str, Any], int]],
        *listed: dict[str, Any],
    ) -> None:
        """A report as agents write it now: exceptions listed, the rest as digests."""
        from bridgeport.core import summary
        from bridgeport.core.specs import ResourceRef

        items = [
            (
                ResourceRef(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]),
                o["metadata"]["uid"],
                gen,
            )
            for o, gen in applied
        ]
        self.report(
            node,
            *listed,
            extra={
                "labels": labels,
                "applied": {
                    "count": len(items),
                    "buckets": summary.BUCKETS,
                    "digest": summary.encode(summary.digests(items)),
                },
            },
        )

    def forget_nodes(self) -> None:
        for node in self.nodes:
            self.kubectl("delete", "nodestate", node, "--ignore-not-found", "--wait=false")
        self.nodes.clear()

    def events(self, ns: str, uid: str, reason: str | None = None) -> list[dict[str, Any]]:
        selector = f"involvedObject.uid={uid}" + (f",reason={reason}" if reason else "")
        out = self.kubectl.json("get", "events", "-n", ns, "--field-selector", selector)
        return list(out["items"])


def entry(
    obj: dict[str, Any],
    state: str = "Applied",
    generation: int | None = None,
    reason: str = "Programmed",
    message: str = "",
) -> dict[str, Any]:
    """One NodeState entry about `obj` (at its current generation unless told otherwise)."""
    meta = obj["metadata"]
    return {
        "kind": obj["kind"],
        "namespace": meta.get("namespace", ""),
        "name": meta["name"],
        "uid": meta["uid"],
        "observedGeneration": generation or meta["generation"],
        "state": state,
        "reason": reason,
        "message": message,
    }


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return dict(c)
    return {}


@pytest.fixture(scope="module")
def controller(
    control_plane: Any, crds: Any, kubectl: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllerProcess]:
    kubectl.ok(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "bridgeport-controller"},
            }
        ),
    )
    # The controller logs "first complete listing" on its first event, so there must be one.
    kubectl.ok(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": API,
                "kind": "PortPublication",
                "metadata": {"name": "canary", "namespace": "default"},
                "spec": {"hostPort": 1, "target": {"address": "10.88.0.2", "port": 1}},
            }
        ),
    )
    proc = ControllerProcess(
        control_plane.kubeconfig, tmp_path_factory.mktemp("controller") / "controller.log"
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        # Other modules share this API server (test_rbac counts what its agent reports).
        kubectl("delete", "pp", "canary", "-n", "default", "--ignore-not-found", "--wait=false")


@pytest.fixture
def k(controller: ControllerProcess, kube_client: Any, kubectl: Any) -> Iterator[Cluster]:
    cluster = Cluster(kube_client, kubectl)
    yield cluster
    cluster.forget_nodes()
    assert controller.proc is not None and controller.proc.poll() is None, controller.tail()


def names(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i:02d}" for i in range(n)]


def wait_ready(
    k: Cluster, ns: str, name: str, expected: str, status: str = "True", timeout: float = 30.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = k.pp(ns, name)
        st = obj.get("status", {})
        ok = (
            st.get("ready") == expected
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and condition(obj, "Ready").get("status") == status
        )
        return obj if ok else None

    return wait_for(check, f"pp {ns}/{name} ready {expected} ({status})", timeout)


def test_two_nodes_applied_is_ready(k: Cluster, namespace: str) -> None:
    """Both nodes Applied at generation 1: Ready True, 2/2, kubectl READY 2/2, one Event."""
    pp = k.create_pp(namespace, "web")
    a, b = names("node", 2)
    k.report(a, entry(pp))
    k.report(b, entry(pp))
    obj = wait_ready(k, namespace, "web", "2/2")
    st = obj["status"]
    assert st["nodes"] == {"selected": 2, "ready": 2} and st["problemNodes"] == []
    ready = condition(obj, "Ready")
    assert ready["reason"] == "AllNodesReady" and ready["observedGeneration"] == 1
    assert condition(obj, "Conflicted")["status"] == "False"
    header, row = k.kubectl.ok("get", "pp", "web", "-n", namespace).splitlines()
    assert row[header.index("READY") :].split()[0] == "2/2", (header, row)  # aligned columns
    events = wait_for(lambda: k.events(namespace, pp["metadata"]["uid"], "Ready"), "Ready event")
    assert len(events) == 1 and events[0]["type"] == "Normal"
    assert events[0]["reportingComponent"] == "bridgeport.io/controller"


def test_conflict_names_winner_with_one_event(k: Cluster, namespace: str) -> None:
    """A Conflicted node: the condition quotes the winner; one Warning Event, not one per pass."""
    pp = k.create_pp(namespace, "second")
    uid = pp["metadata"]["uid"]
    a, b = names("node", 2)
    k.report(a, entry(pp))
    k.report(b, entry(pp))
    wait_ready(k, namespace, "second", "2/2")
    msg = f"8080/TCP is already published by PortPublication {namespace}/first (older)"
    k.report(b, entry(pp, "Conflicted", reason="PortConflict", message=msg))

    def conflicted() -> dict[str, Any] | None:
        c = condition(k.pp(namespace, "second"), "Conflicted")
        return c if c.get("status") == "True" else None

    cond = wait_for(conflicted, "Conflicted condition")
    assert cond["reason"] == "PortConflict" and msg in cond["message"] and b in cond["message"]
    obj = k.pp(namespace, "second")
    assert obj["status"]["ready"] == "1/2"
    assert condition(obj, "Ready")["reason"] == "Conflicted"
    assert obj["status"]["problemNodes"] == [
        {"node": b, "state": "Conflicted", "reason": "PortConflict", "message": msg}
    ]
    wait_for(lambda: k.events(namespace, uid, "Conflicted"), "Conflicted event")
    for i in range(3):  # more reports (heartbeats, another message): several reconciles
        k.report(a, entry(pp))
        k.report(b, entry(pp, "Conflicted", reason="PortConflict", message=f"{msg} #{i}"))
        time.sleep(1)
    time.sleep(2)
    events = k.events(namespace, uid, "Conflicted")
    assert len(events) == 1, events
    assert events[0]["type"] == "Warning" and msg in events[0]["message"]
    k.report(b, entry(pp))
    wait_ready(k, namespace, "second", "2/2")
    wait_for(lambda: k.events(namespace, uid, "ConflictResolved"), "ConflictResolved event")


def test_new_generation_waits_for_reports(k: Cluster, namespace: str) -> None:
    """A spec change: Ready False (NodesPending) until every node reports generation 2."""
    pp = k.create_pp(namespace, "web")
    a, b = names("node", 2)
    k.report(a, entry(pp))
    k.report(b, entry(pp))
    wait_ready(k, namespace, "web", "2/2")
    pp = k.patch_pp(namespace, "web", {"spec": {"hostPort": 8081}})
    assert pp["metadata"]["generation"] == 2
    obj = wait_ready(k, namespace, "web", "0/2", status="False")
    assert condition(obj, "Ready")["reason"] == "NodesPending"
    assert [p["reason"] for p in obj["status"]["problemNodes"]] == ["GenerationPending"] * 2
    k.report(a, entry(pp))
    wait_ready(k, namespace, "web", "1/2", status="False")
    k.report(b, entry(pp))
    wait_ready(k, namespace, "web", "2/2")
    events = k.events(namespace, pp["metadata"]["uid"])
    assert all(e["type"] == "Normal" for e in events), events
    assert [e["reason"] for e in events].count("Ready") == 2


def test_inactive_node_not_counted(k: Cluster, namespace: str) -> None:
    """A node reporting Inactive (selector mismatch) counts neither as selected nor ready."""
    pp = k.create_pp(namespace, "web")
    a, b, c = names("node", 3)
    k.report(a, entry(pp))
    k.report(b, entry(pp))
    k.report(
        c,
        entry(
            pp,
            "Inactive",
            reason="NodeSelectorMismatch",
            message="node labels do not match spec.nodeSelector",
        ),
    )
    obj = wait_ready(k, namespace, "web", "2/2")
    assert obj["status"]["nodes"] == {"selected": 2, "ready": 2}


def test_problem_nodes_bounded(k: Cluster, namespace: str) -> None:
    """20 failing nodes: problemNodes holds the first 16 by name; the message has the total."""
    pp = k.create_pp(namespace, "web")
    nodes = names("node", 20)
    for node in reversed(nodes):
        k.report(node, entry(pp, "Failed", reason="KernelRejected", message="nft: no memory"))
    obj = wait_ready(k, namespace, "web", "0/20", status="False")
    problems = obj["status"]["problemNodes"]
    assert [p["node"] for p in problems] == nodes[:16]
    ready = condition(obj, "Ready")
    assert ready["reason"] == "Failed" and "problemNodes lists 16 of 20" in ready["message"]
    events = k.events(namespace, pp["metadata"]["uid"], "Failed")
    assert len(events) == 1 and events[0]["type"] == "Warning"


def test_recreated_resource_does_not_inherit_reports(k: Cluster, namespace: str) -> None:
    """Delete and recreate with the same name: the old object's reports (old uid) are ignored."""
    old = k.create_pp(namespace, "web")
    (a,) = names("node", 1)
    k.report(a, entry(old))
    wait_ready(k, namespace, "web", "1/1")
    k.delete_pp(namespace, "web")
    wait_for(
        lambda: "web" not in k.kubectl.ok("get", "pp", "-n", namespace, "-o", "name"), "deletion"
    )
    new = k.create_pp(namespace, "web")
    obj = wait_ready(k, namespace, "web", "0/0", status="False")
    assert condition(obj, "Ready")["reason"] == "NoReports"
    k.report(a, entry(new))
    wait_ready(k, namespace, "web", "1/1")


def test_bridge_network_status_and_event(k: Cluster) -> None:
    """A cluster-scoped BridgeNetwork gets its status, and its Event lands in "default"."""
    (a,) = names("node", 1)
    name = f"net-{uuid.uuid4().hex[:6]}"
    bn = k.co.create_cluster_custom_object(
        GROUP,
        VERSION,
        "bridgenetworks",
        {
            "apiVersion": API,
            "kind": "BridgeNetwork",
            "metadata": {"name": name},
            "spec": {"subnet": "10.99.0.0/24"},
        },
    )
    try:
        k.report(a, entry(bn))

        def ready() -> dict[str, Any] | None:
            obj = k.co.get_cluster_custom_object(GROUP, VERSION, "bridgenetworks", name)
            return obj if obj.get("status", {}).get("ready") == "1/1" else None

        obj = wait_for(ready, "BridgeNetwork ready")
        assert condition(obj, "Ready")["status"] == "True"
        assert k.kubectl.ok("get", "bn", name, "-o", "jsonpath={.status.ready}") == "1/1"
        wait_for(lambda: k.events("default", bn["metadata"]["uid"], "Ready"), "event in default")
    finally:
        k.co.delete_cluster_custom_object(GROUP, VERSION, "bridgenetworks", name)


def test_two_replicas_one_writer(
    k: Cluster, namespace: str, controller: ControllerProcess, control_plane: Any, tmp_path: Path
) -> None:
    """A second replica: kopf peering pauses one of the two; statuses and Events come once."""
    second = ControllerProcess(control_plane.kubeconfig, tmp_path / "second.log")
    first_log = len(controller.log())
    # Its keep-alive is in the peering object: the lower priority of the two pauses. (A
    # replica that starts as the standby stays paused from the start and logs nothing.)
    second.start("Keep-alive in 'bridgeport-controller'")
    try:
        paused = "Pausing operations in favour"
        time.sleep(1.5)
        assert (paused in controller.log()[first_log:]) == ("first complete" in second.log())
        pp = k.create_pp(namespace, "web")
        a, b = names("node", 2)
        k.report(a, entry(pp))
        k.report(b, entry(pp))
        wait_ready(k, namespace, "web", "2/2")
        time.sleep(2)
        assert len(k.events(namespace, pp["metadata"]["uid"], "Ready")) == 1
        writers = [
            p
            for p in (controller, second)
            if f"{namespace}/web" in p.log()[first_log if p is controller else 0 :]
        ]
        assert len(writers) == 1, (controller.tail(), second.tail())
    finally:
        second.stop()
    wait_for(
        lambda: (
            "Resuming operations" in controller.log()[first_log:]
            or paused not in controller.log()[first_log:]
        ),
        "first replica active again",
    )


def test_no_writes_when_nothing_changes(
    k: Cluster, namespace: str, controller: ControllerProcess
) -> None:
    """Heartbeats, label edits and a controller restart leave the status (and events) alone."""
    pp = k.create_pp(namespace, "web")
    uid = pp["metadata"]["uid"]
    a, b = names("node", 2)
    k.report(a, entry(pp))
    k.report(b, entry(pp, "Conflicted", reason="PortConflict", message="taken by x/y"))
    wait_ready(k, namespace, "web", "1/2", status="False")
    wait_for(lambda: k.events(namespace, uid, "Conflicted"), "Conflicted event")
    time.sleep(1.5)  # let any pass in flight finish
    k.patch_pp(namespace, "web", {"metadata": {"labels": {"team": "a"}}})  # no new generation
    rv = k.pp(namespace, "web")["metadata"]["resourceVersion"]
    for _ in range(3):  # agents' periodic writes: new lastSync, same entries
        k.report(a, entry(pp))
        k.report(b, entry(pp, "Conflicted", reason="PortConflict", message="taken by x/y"))
        time.sleep(1)
    time.sleep(2)
    assert k.pp(namespace, "web")["metadata"]["resourceVersion"] == rv
    events = len(k.events(namespace, uid))
    controller.stop()
    controller.start()
    time.sleep(3)
    assert k.pp(namespace, "web")["metadata"]["resourceVersion"] == rv
    assert len(k.events(namespace, uid)) == events


def test_namespace_scope(
    k: Cluster, kubectl: Any, controller: ControllerProcess, control_plane: Any, tmp_path: Path
) -> None:
    """namespace_scope: publications of that namespace only (the main controller is stopped)."""
    inside, outside = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for ns in (inside, outside):
        kubectl.ok("create", "namespace", ns)
    controller.stop()
    scoped = ControllerProcess(
        control_plane.kubeconfig,
        tmp_path / "scoped.log",
        f"namespace_scope={inside!r}, peering=False",
    )
    try:
        pps = [k.create_pp(ns, "web") for ns in (inside, outside)]
        (a,) = names("node", 1)
        k.report(a, *(entry(pp) for pp in pps))
        scoped.start()
        wait_ready(k, inside, "web", "1/1")
        time.sleep(2)
        assert "status" not in k.pp(outside, "web"), scoped.tail()
    finally:
        scoped.stop()
        controller.start()
        for ns in (inside, outside):
            kubectl("delete", "namespace", ns, "--wait=false")
    wait_ready(k, outside, "web", "1/1")


def test_prune_forgets_objects_deleted_unseen(k: Cluster, namespace: str, kube_client: Any) -> None:
    """The periodic resync lists metadata only and forgets what no longer exists."""
    import asyncio

    from bridgeport.kube.controller import Controller, ControllerSettings

    pp = k.create_pp(namespace, "web")
    (a,) = names("node", 1)
    k.report(a, entry(pp))
    c = Controller(ControllerSettings(peering=False), api=kube_client)
    c.store.put_resource(pp)
    c.store.put_resource({**pp, "metadata": {**pp["metadata"], "name": "gone", "uid": "x"}})
    c.store.put_node(a, {"resources": [entry(pp)]})
    c.store.put_node("ghost-node", {"resources": [entry(pp)]})
    asyncio.run(c.prune())
    assert {ref.name for ref in c.store.resources} == {"web"}
    assert set(c.store.nodes) == {a} and len(c.store.inputs(next(iter(c.store.resources)))[0]) == 1


def test_summarised_reports_are_exact(k: Cluster, namespace: str) -> None:
    """Reports without an entry per resource (labels + digests): READY n/m and problemNodes
    stay exact: a nodeSelector mismatch is derived from the labels, a node that lags a spec
    change shows exactly that resource pending, a listed exception is a problem node."""
    web = k.create_pp(namespace, "web")
    k.create_pp(namespace, "db", 8081)
    zone = f"z{uuid.uuid4().hex[:6]}"
    only_a = k.co.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "portpublications",
        "db",
        {"spec": {"nodeSelector": {"matchLabels": {"zone": zone}}}},
        _content_type="application/merge-patch+json",
    )
    a, b = names("node", 2)
    k.report_summary(a, {"zone": zone}, [(web, 1), (only_a, 2)])
    k.report_summary(b, {"zone": "other"}, [(web, 1)])
    wait_ready(k, namespace, "web", "2/2")
    obj = wait_ready(k, namespace, "db", "1/1")
    assert obj["status"]["problemNodes"] == [] and only_a["metadata"]["generation"] == 2

    web2 = k.patch_pp(namespace, "web", {"spec": {"hostPort": 9090}})
    k.report_summary(a, {"zone": zone}, [(web2, 2), (only_a, 2)])
    obj = wait_ready(k, namespace, "web", "1/2", status="False")
    assert obj["status"]["problemNodes"] == [
        {
            "node": b,
            "state": "Applied",
            "reason": "GenerationPending",
            "message": "applied generation 1, current is 2",
        }
    ]
    wait_ready(k, namespace, "db", "1/1")  # its bucket neighbour, if any, is untouched
    k.report_summary(
        b,
        {"zone": "other"},
        [],
        entry(web2, "Conflicted", reason="PortInUse", message="taken by a host process"),
    )

    def conflicted() -> dict[str, Any] | None:
        o = k.pp(namespace, "web")
        return o if condition(o, "Conflicted").get("status") == "True" else None

    obj = wait_for(conflicted, "web Conflicted")
    assert obj["status"]["ready"] == "1/2"
    assert [p["state"] for p in obj["status"]["problemNodes"]] == ["Conflicted"]


def test_store_keeps_the_newer_incarnation() -> None:
    """A late event of a deleted object with the same name does not replace the new one."""
    from bridgeport.kube.store import Store

    def obj(uid: str, created: str, **meta: Any) -> dict[str, Any]:
        return {
            "kind": "PortPublication",
            "metadata": {
                "name": "web",
                "namespace": "ns",
                "uid": uid,
                "generation": 1,
                "creationTimestamp": created,
                **meta,
            },
        }

    store = Store()
    ref, dirty = store.put_resource(obj("new", "2026-01-02T00:00:00Z"))
    assert dirty == {ref}
    assert store.put_resource(obj("old", "2026-01-01T00:00:00Z")) == (ref, set())
    assert store.put_resource(
        obj("old", "2026-01-02T00:00:00Z", deletionTimestamp="2026-01-02T00:00:00Z")
    ) == (ref, set())
    assert store.resources[ref].resource.uid == "new"
    assert store.drop_resource(ref, "old") is None and store.drop_resource(ref, "new") == {ref}


def test_store_marks_only_changed_reports() -> None:
    """A NodeState update marks the resources whose entries changed, not all of them."""
    from bridgeport.kube.store import Store

    def e(name: str, state: str) -> dict[str, Any]:
        return {
            "kind": "PortPublication",
            "namespace": "ns",
            "name": name,
            "uid": name,
            "observedGeneration": 1,
            "state": state,
        }

    store = Store()
    assert {
        r.name for r in store.put_node("n1", {"resources": [e("a", "Applied"), e("b", "Applied")]})
    } == {"a", "b"}
    assert store.put_node("n1", {"resources": [e("a", "Applied"), e("b", "Applied")]}) == set()
    assert {r.name for r in store.put_node("n1", {"resources": [e("a", "Failed")]})} == {"a", "b"}
    assert {r.name for r in store.drop_node("n1")} == {"a"} and store.nodes == {}


def test_active_peer_rule() -> None:
    """kopf's rule: a live peer with a higher or equal priority makes us the standby."""
    from bridgeport.kube.store import is_active_peer

    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    live = {"lastseen": "2026-01-01T11:59:30+00:00", "lifetime": 60}
    dead = {"lastseen": "2026-01-01T11:58:00+00:00", "lifetime": 60}
    assert is_active_peer(None, "me", 5, now)
    assert is_active_peer(
        {"me": {**live, "priority": 5}, "x": {**live, "priority": 4}}, "me", 5, now
    )
    assert not is_active_peer({"x": {**live, "priority": 9}}, "me", 5, now)
    assert not is_active_peer({"x": {**live, "priority": 5}}, "me", 5, now)
    assert is_active_peer({"x": {**dead, "priority": 9}, "y": "junk"}, "me", 5, now)


def test_peering_keepalive(k: Cluster) -> None:
    """The controller keeps its entry alive in the ClusterKopfPeering (one active replica)."""
    peering = k.co.get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "bridgeport-controller"
    )
    peers = peering.get("status") or {}
    assert len(peers) >= 1 and all("priority" in p for p in peers.values()), peers


def test_missing_peering_object_is_explained(
    control_plane: Any, crds: Any, kubectl: Any, tmp_path: Path
) -> None:
    """Issue 11, case 9: without its ClusterKopfPeering the controller says, once, what it
    waits for and that --no-peering exists; it notices when the object appears."""
    name = f"bp-missing-{uuid.uuid4().hex[:8]}"
    waiting = ControllerProcess(
        control_plane.kubeconfig, tmp_path / "waiting.log", f"peering=True, peering_name={name!r}"
    )
    try:
        waiting.start("waiting for the ClusterKopfPeering")
        kubectl.ok(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": name},
                }
            ),
        )
        wait_for(lambda: "ClusterKopfPeering found" in waiting.log(), "peering object noticed")
        lines = [
            line
            for line in waiting.log().splitlines()
            if "waiting for the ClusterKopfPeering" in line
        ]
        assert len(lines) == 1 and "--no-peering" in lines[0] and name in lines[0], lines
    finally:
        waiting.stop()
        kubectl("delete", "clusterkopfpeering", name, "--wait=false")
